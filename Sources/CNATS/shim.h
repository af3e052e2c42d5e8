#ifndef AUTONOMOUS_CNATS_SHIM_H
#define AUTONOMOUS_CNATS_SHIM_H

#include <nats/nats.h>

// `nats_CheckCompatibility()` is a macro; Swift cannot call macros.
static inline natsStatus CNATS_CheckCompatibility(void) {
    return nats_CheckCompatibility();
}

#endif
