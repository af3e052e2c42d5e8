// The raw ceiling: the same hop Autonomous makes, written directly on nats.c with no framework.
//
// A publisher thread publishes N ~200-byte JSON events into stream RAW_IN (JetStream async,
// Nats-Msg-Id per event); W worker threads share one durable pull consumer, fetch batches,
// wrap each event into a derived JSON object, publish it to RAW_OUT (Nats-Msg-Id per output),
// wait for every PubAck of the batch, then ack the inputs. The clock runs from the first
// publish to the N-th output PubAck. Prints one JSON object.
//
//   pipeline <nats-url> <events> <workers> <batch>
//
// With a rate, the same hop paced as scenario b-half paces the ingress: the publisher sends
// <chunk> events at a time (one NDJSON request's worth), chunk k due at k × chunk / rate
// seconds, and waits for the chunk's PubAcks (the ingress's 2xx); a worker notes when each
// event reached it. Adds the p50/p90/p99/p99.9/max of PubAck → worker, in ms, to the JSON:
//
//   pipeline <nats-url> <events> <workers> <batch> <rate> <chunk>
//
// It is also the producer of the publish scenarios (a, d, e), so that Autonomous and the raw
// pipeline are fed by the same program and the producer's cost is the same in both:
//
//   pipeline publish <nats-url> <subject> <events> <table> <tenant>
//
// publishes <events> JSON events (with "seq" and "sent_ns") to <subject> with the headers a
// producer sets on the wire (Nats-Msg-Id, Aut-Table, Aut-Tenant, Aut-Type), waits for every
// PubAck, and prints {"published":N,"failed":F}.
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// How long a publish may wait for room when 8192 PubAcks are outstanding. nats.c's default,
// 200 ms, failed a whole run once when nats-server, saturated by scenario d, answered no PubAck
// for that long; a late PubAck is not a lost record (the audit counts those), so wait longer.
#define STALL_WAIT_MS 30000

static const char *url;
static long total;
static int batch;
static atomic_long outputs_acked;
static atomic_long inputs_acked;
static atomic_int failed;
// Paced mode: when each event reached a worker (indexed by its number), and when each
// chunk's last PubAck came back.
static int64_t *reached_ns;
static int64_t *chunk_acked_ns;
static long chunk_size;

static int64_t now_ns(void);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void check(natsStatus s, const char *what) {
    if (s != NATS_OK) {
        fprintf(stderr, "%s: %s\n", what, natsStatus_GetText(s));
        exit(1);
    }
}

typedef struct {
    atomic_int pending;
} batch_state;

// A connection to `server` and a JetStream context publishing asynchronously: up to 8192
// PubAcks outstanding, each handed to `on_ack` (NULL: none).
static jsCtx *connect_js(const char *server, natsConnection **nc, jsPubAckHandler on_ack, const char *what) {
    jsCtx *js = NULL;
    jsOptions jo;
    check(natsConnection_ConnectTo(nc, server), what);
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 8192;
    jo.PublishAsync.StallWait = STALL_WAIT_MS;
    jo.PublishAsync.AckHandler = on_ack;
    check(natsConnection_JetStream(&js, *nc, &jo), what);
    return js;
}


static void out_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure) {
    (void)js;
    (void)closure;
    if (pae != NULL) atomic_fetch_add(&failed, 1);
    if (pa != NULL) atomic_fetch_add(&outputs_acked, 1);
    natsMsg_Destroy(msg);
}

// What a worker thread consumes and where it publishes: the pipeline's hop by default, the
// flooding or the light tenant's in tenants mode.
typedef struct {
    const char *stream;
    const char *subject;
    const char *out_subject;
    // Tenants mode: run until this is set (and a fetch found nothing); otherwise until every
    // event is acked.
    atomic_int *stop;
} hop;

static const hop pipeline_hop = {"RAW_IN", "raw.in", "raw.out", NULL};

static void *worker(void *arg) {
    const hop *h = arg != NULL ? arg : &pipeline_hop;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    jsErrCode jerr = 0;
    jsCtx *js = connect_js(url, &nc, out_ack, "worker connect");
    jsSubOptions_Init(&so);
    so.Stream = h->stream;
    so.Consumer = "W";
    check(js_PullSubscribe(&sub, js, h->subject, "W", NULL, &so, &jerr), "pull subscribe");
    char body[512];
    while (h->stop != NULL ? 1 : atomic_load(&inputs_acked) < total) {
        natsMsgList list = {0};
        natsStatus s = natsSubscription_Fetch(&list, sub, batch, 500, &jerr);
        if (s == NATS_TIMEOUT) {
            if (h->stop != NULL && atomic_load(h->stop)) break;
            continue;
        }
        check(s, "fetch");
        int64_t reached = now_ns();
        for (int i = 0; i < list.Count; i++) {
            natsMsg *in = list.Msgs[i];
            const char *id = NULL;
            natsMsgHeader_Get(in, "Nats-Msg-Id", &id);
            if (reached_ns != NULL && id != NULL && strncmp(id, "evt-", 4) == 0) {
                long n = atol(id + 4);
                if (n >= 0 && n < total) reached_ns[n] = reached;
            }
            int len = snprintf(body, sizeof body, "{\"source\":\"%s\",\"handled\":true,\"event\":%.*s}", id ? id : "",
                               natsMsg_GetDataLength(in), natsMsg_GetData(in));
            natsMsg *out = NULL;
            check(natsMsg_Create(&out, h->out_subject, NULL, body, len), "create out");
            char outID[96];
            snprintf(outID, sizeof outID, "out-%s", id ? id : "x");
            natsMsgHeader_Set(out, "Nats-Msg-Id", outID);
            check(js_PublishMsgAsync(js, &out, NULL), "publish out");
        }
        // Outputs before acks: wait for every PubAck of this batch.
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 30000;
        check(js_PublishAsyncComplete(js, &po), "publish complete");
        for (int i = 0; i < list.Count; i++) {
            natsMsg_Ack(list.Msgs[i], NULL);
        }
        atomic_fetch_add(&inputs_acked, list.Count);
        natsMsgList_Destroy(&list);
    }
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return NULL;
}

static int compare_int64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int publish_only(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: pipeline publish <nats-url> <subject> <events> <table> <tenant>\n");
        return 2;
    }
    const char *subject = argv[3];
    long count = atol(argv[4]);
    const char *table = argv[5];
    const char *tenant = argv[6];
    natsConnection *nc = NULL;
    jsCtx *js = connect_js(argv[2], &nc, out_ack, "connect");
    char event[320];
    char id[96];
    for (long seq = 0; seq < count; seq++) {
        int length = snprintf(event, sizeof event,
                              "{\"order_id\":\"o-%ld\",\"customer\":\"c%ld\",\"items\":[{\"sku\":\"s-%ld\",\"quantity\":%ld,"
                              "\"unit_price\":%ld.5}],\"currency\":\"EUR\",\"seq\":%ld,\"req\":0,\"sent_ns\":%lld}",
                              seq, seq % 100, seq % 1000, 1 + seq % 7, seq % 500, seq, (long long)now_ns());
        natsMsg *msg = NULL;
        check(natsMsg_Create(&msg, subject, NULL, event, length), "create");
        snprintf(id, sizeof id, "ld-%s-%ld", table, seq);
        natsMsgHeader_Set(msg, "Nats-Msg-Id", id);
        natsMsgHeader_Set(msg, "Aut-Table", table);
        natsMsgHeader_Set(msg, "Aut-Tenant", tenant);
        natsMsgHeader_Set(msg, "Aut-Type", "json@1");
        check(js_PublishMsgAsync(js, &msg, NULL), "publish");
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 120000;
    check(js_PublishAsyncComplete(js, &po), "publish complete");
    printf("{\"published\":%ld,\"failed\":%d}\n", atomic_load(&outputs_acked), atomic_load(&failed));
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return atomic_load(&outputs_acked) == count && atomic_load(&failed) == 0 ? 0 : 1;
}

// Tenants mode: scenario f with no framework. Two hops as the pipeline's, one per tenant, each
// with its own streams and consumer (as each Autonomous tenant has): <workers> threads handle
// the flooding tenant's, one thread the light tenant's. The light tenant publishes <count>
// events at <rate>/s, one at a time, each waiting for its PubAck (as a single-record POST
// waits for its 2xx): once alone, then while the flooding tenant publishes <chunk> events at a
// time as fast as their PubAcks come back (as f's flood posts its requests one after the
// other). Prints the light tenant's PubAck p50…max in ms, alone and with the flood, and the
// flood's events/s. With <flood-rate>, the flood is paced at that many events/s instead, in
// slices every 5 ms (as the ingress publishes a tenant held to its limit), each slice waiting
// for its PubAcks:
//
//   pipeline tenants <nats-url> <rate> <count> <chunk> <workers> <batch> [<flood-rate>]
static atomic_int flood_stop;
static atomic_long flooded;
static double flood_rate;

static void publish_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure) {
    (void)js;
    (void)pa;
    (void)closure;
    if (pae != NULL) atomic_fetch_add(&failed, 1);
    natsMsg_Destroy(msg);
}

static void *flood(void *arg) {
    long chunk = *(const long *)arg;
    natsConnection *nc = NULL;
    jsCtx *js = connect_js(url, &nc, publish_ack, "flood connect");
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    char event[320];
    char id[48];
    long seq = 0;
    int64_t start = now_ns();
    if (flood_rate > 0) {
        chunk = (long)(flood_rate * 0.005);
        if (chunk < 1) chunk = 1;
    }
    while (!atomic_load(&flood_stop)) {
        if (flood_rate > 0) {
            int64_t wait = start + (int64_t)(seq * 1e9 / flood_rate) - now_ns();
            if (wait > 0) {
                struct timespec ts = {(time_t)(wait / 1000000000LL), (long)(wait % 1000000000LL)};
                nanosleep(&ts, NULL);
            }
        }
        for (long i = 0; i < chunk; i++, seq++) {
            int length = snprintf(event, sizeof event,
                                  "{\"order_id\":\"o-%ld\",\"customer\":\"c%ld\",\"items\":[{\"sku\":\"s-%ld\",\"quantity\":%ld,"
                                  "\"unit_price\":%ld.5}],\"currency\":\"EUR\",\"seq\":%ld,\"req\":0}",
                                  i, i % 100, i % 1000, 1 + i % 7, i % 500, i);
            natsMsg *msg = NULL;
            check(natsMsg_Create(&msg, "raw.in", NULL, event, length), "flood create");
            snprintf(id, sizeof id, "flood-%ld", seq);
            natsMsgHeader_Set(msg, "Nats-Msg-Id", id);
            check(js_PublishMsgAsync(js, &msg, NULL), "flood publish");
        }
        check(js_PublishAsyncComplete(js, &po), "flood publish complete");
        atomic_fetch_add(&flooded, chunk);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return NULL;
}

// Publishes `count` light events at `rate`/s, each after the previous one's PubAck; stores
// each one's time to PubAck in `latency` (ns), sorted.
static void light(jsCtx *js, double rate, long count, long first, int64_t *latency) {
    char event[128];
    char id[48];
    int64_t start = now_ns();
    for (long i = 0; i < count; i++) {
        int64_t due = start + (int64_t)(i * 1e9 / rate);
        int64_t wait = due - now_ns();
        if (wait > 0) {
            struct timespec ts = {(time_t)(wait / 1000000000LL), (long)(wait % 1000000000LL)};
            nanosleep(&ts, NULL);
        }
        int64_t sent = now_ns();
        int length = snprintf(event, sizeof event, "{\"order_id\":\"o-%ld\",\"customer\":\"c1\",\"currency\":\"EUR\",\"seq\":%ld}", first + i, first + i);
        natsMsg *msg = NULL;
        check(natsMsg_Create(&msg, "raw.light.in", NULL, event, length), "light create");
        snprintf(id, sizeof id, "light-%ld", first + i);
        natsMsgHeader_Set(msg, "Nats-Msg-Id", id);
        jsPubAck *ack = NULL;
        check(js_PublishMsg(&ack, js, msg, NULL, NULL), "light publish");
        latency[i] = now_ns() - sent;
        jsPubAck_Destroy(ack);
        natsMsg_Destroy(msg);
    }
    qsort(latency, count, sizeof(int64_t), compare_int64);
}

static void print_percentiles(const char *prefix, const int64_t *sorted, long count) {
    double p[] = {50, 90, 99, 99.9};
    const char *names[] = {"p50", "p90", "p99", "p999"};
    for (int k = 0; k < 4; k++) {
        long index = (long)(p[k] / 100.0 * count);
        if (index >= count) index = count - 1;
        printf(",\"%s_%s_ms\":%.3f", prefix, names[k], sorted[index] / 1e6);
    }
    printf(",\"%s_max_ms\":%.3f", prefix, sorted[count - 1] / 1e6);
}

static void add_hop(jsCtx *js, const char *in_stream, const char *in_subject, const char *out_stream, const char *out_subject);

static int tenants(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: pipeline tenants <nats-url> <rate> <count> <chunk> <workers> <batch> [<flood-rate>]\n");
        return 2;
    }
    url = argv[2];
    double rate = atof(argv[3]);
    long count = atol(argv[4]);
    long chunk = atol(argv[5]);
    int workers = atoi(argv[6]);
    batch = atoi(argv[7]);
    flood_rate = argc == 9 ? atof(argv[8]) : 0;
    if (rate <= 0 || count < 1 || chunk < 1 || workers < 1 || workers > 63 || batch < 1) {
        fprintf(stderr, "pipeline tenants: rate, count, chunk, workers (1-63) and batch must be positive\n");
        return 2;
    }
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    check(natsConnection_ConnectTo(&nc, url), "connect");
    check(natsConnection_JetStream(&js, nc, NULL), "js");
    add_hop(js, "RAW_IN", "raw.in", "RAW_OUT", "raw.out");
    add_hop(js, "RAW_LIGHT_IN", "raw.light.in", "RAW_LIGHT_OUT", "raw.light.out");
    atomic_int workers_stop = 0;
    hop flood_hop = {"RAW_IN", "raw.in", "raw.out", &workers_stop};
    hop light_hop = {"RAW_LIGHT_IN", "raw.light.in", "raw.light.out", &workers_stop};
    pthread_t threads[64];
    for (int w = 0; w < workers; w++) pthread_create(&threads[w], NULL, worker, &flood_hop);
    pthread_create(&threads[workers], NULL, worker, &light_hop);

    int64_t *alone = malloc(sizeof(int64_t) * count);
    int64_t *flooding = malloc(sizeof(int64_t) * count);
    light(js, rate, count, 0, alone);
    pthread_t flooder;
    pthread_create(&flooder, NULL, flood, &chunk);
    struct timespec second = {1, 0};
    nanosleep(&second, NULL);
    long before = atomic_load(&flooded);
    int64_t start = now_ns();
    light(js, rate, count, count, flooding);
    double seconds = (now_ns() - start) / 1e9;
    long during = atomic_load(&flooded) - before;
    atomic_store(&flood_stop, 1);
    pthread_join(flooder, NULL);
    long expected = atomic_load(&flooded) + 2 * count;
    int64_t deadline = now_ns() + 300LL * 1000000000LL;
    while (atomic_load(&outputs_acked) < expected && now_ns() < deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&workers_stop, 1);
    for (int w = 0; w <= workers; w++) pthread_join(threads[w], NULL);
    printf("{\"count\":%ld,\"rate\":%.1f,\"chunk\":%ld,\"flood_per_second\":%.1f,\"flooded\":%ld,\"outputs\":%ld,\"failed\":%d",
           count, rate, chunk, during / seconds, atomic_load(&flooded), atomic_load(&outputs_acked), atomic_load(&failed));
    print_percentiles("alone", alone, count);
    print_percentiles("flood", flooding, count);
    printf("}\n");
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return atomic_load(&outputs_acked) == expected && atomic_load(&failed) == 0 ? 0 : 1;
}

// A stream for a hop's input with a durable pull consumer "W", and a stream for its output
// (both deleted first: a pipeline run starts empty).
static void add_hop(jsCtx *js, const char *in_stream, const char *in_subject, const char *out_stream, const char *out_subject) {
    jsErrCode jerr = 0;
    const char *inSubjects[] = {in_subject};
    const char *outSubjects[] = {out_subject};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = in_stream;
    sc.Subjects = inSubjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Duplicates = 120LL * 1000000000LL;
    js_DeleteStream(js, in_stream, NULL, NULL);
    js_DeleteStream(js, out_stream, NULL, NULL);
    check(js_AddStream(NULL, js, &sc, NULL, &jerr), "add input stream");
    sc.Name = out_stream;
    sc.Subjects = outSubjects;
    check(js_AddStream(NULL, js, &sc, NULL, &jerr), "add output stream");
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = "W";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 60LL * 1000000000LL;
    cc.MaxAckPending = 65536;
    cc.MaxWaiting = 512;
    check(js_AddConsumer(NULL, js, in_stream, &cc, NULL, &jerr), "add consumer");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "publish") == 0) return publish_only(argc, argv);
    if (argc > 1 && strcmp(argv[1], "tenants") == 0) return tenants(argc, argv);
    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: pipeline <nats-url> <events> <workers> <batch> [<rate> <chunk>]\n");
        return 2;
    }
    url = argv[1];
    total = atol(argv[2]);
    int workers = atoi(argv[3]);
    batch = atoi(argv[4]);
    double rate = argc == 7 ? atof(argv[5]) : 0;
    if (rate > 0) {
        chunk_size = atol(argv[6]);
        if (chunk_size < 1) chunk_size = 1;
        reached_ns = calloc(total, sizeof(int64_t));
        chunk_acked_ns = calloc(total / chunk_size + 1, sizeof(int64_t));
    }

    natsConnection *nc = NULL;
    jsCtx *js = connect_js(url, &nc, NULL, "connect");
    add_hop(js, "RAW_IN", "raw.in", "RAW_OUT", "raw.out");

    // Events are built before the clock starts.
    char **events = malloc(sizeof(char *) * total);
    int *lengths = malloc(sizeof(int) * total);
    for (long i = 0; i < total; i++) {
        events[i] = malloc(256);
        lengths[i] = snprintf(events[i], 256,
                              "{\"order_id\":\"o-%08ld\",\"customer\":\"c%ld\",\"items\":[{\"sku\":\"s-%ld\",\"quantity\":%ld,"
                              "\"unit_price\":%ld.5}],\"currency\":\"EUR\",\"note\":\"raw pipeline event padding\"}",
                              i, i % 100, i % 1000, 1 + i % 7, i % 500);
    }
    pthread_t threads[64];
    for (int w = 0; w < workers && w < 64; w++) pthread_create(&threads[w], NULL, worker, NULL);

    double start = now_s();
    char id[32];
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    for (long i = 0; i < total; i++) {
        if (rate > 0 && i % chunk_size == 0) {
            double due = start + (double)i / rate;
            double wait = due - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        natsMsg *msg = NULL;
        check(natsMsg_Create(&msg, "raw.in", NULL, events[i], lengths[i]), "create");
        snprintf(id, sizeof id, "evt-%ld", i);
        natsMsgHeader_Set(msg, "Nats-Msg-Id", id);
        check(js_PublishMsgAsync(js, &msg, NULL), "publish");
        if (rate > 0 && ((i + 1) % chunk_size == 0 || i + 1 == total)) {
            check(js_PublishAsyncComplete(js, &po), "publish complete");
            chunk_acked_ns[i / chunk_size] = now_ns();
        }
    }
    check(js_PublishAsyncComplete(js, &po), "publish complete");
    double published = now_s();
    while (atomic_load(&outputs_acked) < total) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        if (now_s() - start > 300) break;
    }
    double end = now_s();
    for (int w = 0; w < workers && w < 64; w++) pthread_join(threads[w], NULL);
    printf("{\"events\":%ld,\"workers\":%d,\"batch\":%d,\"seconds\":%.4f,\"events_per_second\":%.1f,"
           "\"publish_per_second\":%.1f,\"outputs\":%ld,\"failed\":%d",
           total, workers, batch, end - start, total / (end - start), total / (published - start),
           atomic_load(&outputs_acked), atomic_load(&failed));
    if (rate > 0) {
        // PubAck → worker per event; an event that reached the worker before its chunk's last
        // PubAck counts as 0, as the runner counts a record handled before its request's 2xx.
        int64_t *latency = malloc(sizeof(int64_t) * total);
        for (long i = 0; i < total; i++) {
            int64_t d = reached_ns[i] - chunk_acked_ns[i / chunk_size];
            latency[i] = d > 0 ? d : 0;
        }
        qsort(latency, total, sizeof(int64_t), compare_int64);
        double p[] = {50, 90, 99, 99.9};
        const char *names[] = {"p50", "p90", "p99", "p999"};
        for (int k = 0; k < 4; k++) {
            long index = (long)(p[k] / 100.0 * total);
            if (index >= total) index = total - 1;
            printf(",\"%s_ms\":%.3f", names[k], latency[index] / 1e6);
        }
        printf(",\"max_ms\":%.3f", latency[total - 1] / 1e6);
    }
    printf("}\n");
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return atomic_load(&outputs_acked) == total && atomic_load(&failed) == 0 ? 0 : 1;
}
