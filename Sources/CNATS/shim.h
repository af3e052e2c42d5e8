#ifndef AUTONOMOUS_CNATS_SHIM_H
#define AUTONOMOUS_CNATS_SHIM_H

#include <nats/nats.h>

// `nats_CheckCompatibility()` is a macro; Swift cannot call macros.
static inline natsStatus CNATS_CheckCompatibility(void) {
    return nats_CheckCompatibility();
}

// Two functions libnats exports (and has kept unchanged since headers arrived in 2.2) but
// does not declare in nats.h. `natsMsg_create` builds a message from an already encoded
// header block followed by the payload (`hdrLen` bytes of `buf` are the header block), the
// way nats.c builds a received message; `natsConnection_PublishMsg` then sends that block
// as it is instead of re-encoding a header map. `natsMsg_free` frees such a message on the
// calling thread (`natsMsg_Destroy` hands it to the library's collector thread).
// `NATS.MessageEncoding` checks at start-up that both behave as expected and falls back to
// the public API when they do not.
natsStatus natsMsg_create(natsMsg **newMsg,
                          const char *subject, int subjLen,
                          const char *reply, int replyLen,
                          const char *buf, int bufLen, int hdrLen);
void natsMsg_free(void *object);

#endif
