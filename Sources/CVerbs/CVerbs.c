// The shim behind CVerbs.h. verbs.h gives the structure layouts and constants; every libibverbs function is reached
// through a pointer from dlsym, never by name, so this object has no undefined ibv_* symbol for the linker to need.
// Where verbs.h implements a call inline (ibv_query_port picks the provider's extended op when the context has
// one), the same choice is made here by hand.
#include "CVerbs.h"

#include <dlfcn.h>
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if __has_include(<infiniband/verbs.h>)
#include <infiniband/verbs.h>
#define CVERBS_HAVE_HEADERS 1
#else
#define CVERBS_HAVE_HEADERS 0
#endif

#if CVERBS_HAVE_HEADERS

typedef struct ibv_device **(*get_device_list_fn)(int *);
typedef void (*free_device_list_fn)(struct ibv_device **);
typedef const char *(*get_device_name_fn)(struct ibv_device *);
typedef __be64 (*get_device_guid_fn)(struct ibv_device *);
typedef struct ibv_context *(*open_device_fn)(struct ibv_device *);
typedef int (*close_device_fn)(struct ibv_context *);
typedef int (*query_device_fn)(struct ibv_context *, struct ibv_device_attr *);
// The exported ibv_query_port fills the older, shorter attribute struct; verbs.h zeroes the full one first.
typedef int (*query_port_compat_fn)(struct ibv_context *, uint8_t, struct ibv_port_attr *);
typedef int (*query_gid_fn)(struct ibv_context *, uint8_t, int, union ibv_gid *);
typedef struct ibv_pd *(*alloc_pd_fn)(struct ibv_context *);
typedef int (*dealloc_pd_fn)(struct ibv_pd *);
typedef struct ibv_mr *(*reg_mr_fn)(struct ibv_pd *, void *, size_t, int);
typedef int (*dereg_mr_fn)(struct ibv_mr *);
typedef struct ibv_comp_channel *(*create_comp_channel_fn)(struct ibv_context *);
typedef int (*destroy_comp_channel_fn)(struct ibv_comp_channel *);
typedef struct ibv_cq *(*create_cq_fn)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int);
typedef int (*destroy_cq_fn)(struct ibv_cq *);
typedef int (*get_cq_event_fn)(struct ibv_comp_channel *, struct ibv_cq **, void **);
typedef void (*ack_cq_events_fn)(struct ibv_cq *, unsigned int);
typedef struct ibv_qp *(*create_qp_fn)(struct ibv_pd *, struct ibv_qp_init_attr *);
typedef int (*destroy_qp_fn)(struct ibv_qp *);
typedef int (*modify_qp_fn)(struct ibv_qp *, struct ibv_qp_attr *, int);
typedef int (*query_qp_fn)(struct ibv_qp *, struct ibv_qp_attr *, int, struct ibv_qp_init_attr *);

int cverbs_built_with_headers(void) { return 1; }

struct cverbs_library {
    void *handle;
    get_device_list_fn get_device_list;
    free_device_list_fn free_device_list;
    get_device_name_fn get_device_name;
    get_device_guid_fn get_device_guid;
    open_device_fn open_device;
    close_device_fn close_device;
    query_device_fn query_device;
    query_port_compat_fn query_port_compat;
    query_gid_fn query_gid;
    alloc_pd_fn alloc_pd;
    dealloc_pd_fn dealloc_pd;
    reg_mr_fn reg_mr;
    dereg_mr_fn dereg_mr;
    create_comp_channel_fn create_comp_channel;
    destroy_comp_channel_fn destroy_comp_channel;
    create_cq_fn create_cq;
    destroy_cq_fn destroy_cq;
    get_cq_event_fn get_cq_event;
    ack_cq_events_fn ack_cq_events;
    create_qp_fn create_qp;
    destroy_qp_fn destroy_qp;
    modify_qp_fn modify_qp;
    query_qp_fn query_qp;
};

struct cverbs_context {
    const cverbs_library *library;
    struct ibv_context *context;
};

static void set_message(char *message, size_t size, const char *format, const char *value) {
    if (message != NULL && size > 0) snprintf(message, size, format, value);
}

int cverbs_library_open(const char *path, cverbs_library **out, char *message, size_t message_size) {
    *out = NULL;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *reason = dlerror();
        set_message(message, message_size, "%s", reason != NULL ? reason : "dlopen failed");
        return CVERBS_LIBRARY_NOT_FOUND;
    }
    cverbs_library *library = calloc(1, sizeof(*library));
    if (library == NULL) {
        dlclose(handle);
        return ENOMEM;
    }
    library->handle = handle;
    struct { const char *name; void **slot; } symbols[] = {
        {"ibv_get_device_list", (void **)&library->get_device_list},
        {"ibv_free_device_list", (void **)&library->free_device_list},
        {"ibv_get_device_name", (void **)&library->get_device_name},
        {"ibv_get_device_guid", (void **)&library->get_device_guid},
        {"ibv_open_device", (void **)&library->open_device},
        {"ibv_close_device", (void **)&library->close_device},
        {"ibv_query_device", (void **)&library->query_device},
        {"ibv_query_port", (void **)&library->query_port_compat},
        {"ibv_query_gid", (void **)&library->query_gid},
        {"ibv_alloc_pd", (void **)&library->alloc_pd},
        {"ibv_dealloc_pd", (void **)&library->dealloc_pd},
        // The exported ibv_reg_mr; verbs.h's macro of that name only adds an IOVA variant this shim does not need.
        {"ibv_reg_mr", (void **)&library->reg_mr},
        {"ibv_dereg_mr", (void **)&library->dereg_mr},
        {"ibv_create_comp_channel", (void **)&library->create_comp_channel},
        {"ibv_destroy_comp_channel", (void **)&library->destroy_comp_channel},
        {"ibv_create_cq", (void **)&library->create_cq},
        {"ibv_destroy_cq", (void **)&library->destroy_cq},
        {"ibv_get_cq_event", (void **)&library->get_cq_event},
        {"ibv_ack_cq_events", (void **)&library->ack_cq_events},
        {"ibv_create_qp", (void **)&library->create_qp},
        {"ibv_destroy_qp", (void **)&library->destroy_qp},
        {"ibv_modify_qp", (void **)&library->modify_qp},
        {"ibv_query_qp", (void **)&library->query_qp},
    };
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        *symbols[i].slot = dlsym(handle, symbols[i].name);
        if (*symbols[i].slot == NULL) {
            set_message(message, message_size, "%s", symbols[i].name);
            dlclose(handle);
            free(library);
            return CVERBS_SYMBOL_NOT_FOUND;
        }
    }
    *out = library;
    return 0;
}

void cverbs_library_close(cverbs_library *library) {
    if (library == NULL) return;
    dlclose(library->handle);
    free(library);
}

int cverbs_list_devices(const cverbs_library *library, cverbs_device_entry *entries, int capacity, int *count) {
    *count = 0;
    errno = 0;
    int total = 0;
    struct ibv_device **list = library->get_device_list(&total);
    if (list == NULL) return errno != 0 ? errno : ENODEV;
    for (int i = 0; i < total && i < capacity; i++) {
        const char *name = library->get_device_name(list[i]);
        snprintf(entries[i].name, sizeof(entries[i].name), "%s", name != NULL ? name : "");
        entries[i].node_guid = be64toh(library->get_device_guid(list[i]));
    }
    *count = total;
    library->free_device_list(list);
    return 0;
}

int cverbs_context_open(const cverbs_library *library, const char *name, cverbs_context **out) {
    *out = NULL;
    errno = 0;
    int total = 0;
    struct ibv_device **list = library->get_device_list(&total);
    if (list == NULL) return errno != 0 ? errno : ENODEV;
    int status = CVERBS_DEVICE_NOT_FOUND;
    for (int i = 0; i < total; i++) {
        const char *candidate = library->get_device_name(list[i]);
        if (candidate == NULL || strcmp(candidate, name) != 0) continue;
        errno = 0;
        // An opened context stays valid after the list is freed.
        struct ibv_context *context = library->open_device(list[i]);
        if (context == NULL) {
            status = errno != 0 ? errno : ENODEV;
            break;
        }
        cverbs_context *wrapper = calloc(1, sizeof(*wrapper));
        if (wrapper == NULL) {
            library->close_device(context);
            status = ENOMEM;
            break;
        }
        wrapper->library = library;
        wrapper->context = context;
        *out = wrapper;
        status = 0;
        break;
    }
    library->free_device_list(list);
    return status;
}

void cverbs_context_close(cverbs_context *context) {
    if (context == NULL) return;
    context->library->close_device(context->context);
    free(context);
}

int cverbs_query_device(const cverbs_context *context, cverbs_device_attributes *out) {
    struct ibv_device_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    int status = context->library->query_device(context->context, &attributes);
    if (status != 0) return status;
    memset(out, 0, sizeof(*out));
    snprintf(out->firmware_version, sizeof(out->firmware_version), "%s", attributes.fw_ver);
    out->vendor_id = attributes.vendor_id;
    out->vendor_part_id = attributes.vendor_part_id;
    out->hardware_version = attributes.hw_ver;
    out->physical_port_count = attributes.phys_port_cnt;
    out->max_qp = attributes.max_qp;
    out->max_qp_wr = attributes.max_qp_wr;
    out->max_cq = attributes.max_cq;
    out->max_cqe = attributes.max_cqe;
    out->max_mr = attributes.max_mr;
    out->max_mr_size = attributes.max_mr_size;
    return 0;
}

// The provider's extended query_port op, when the context is an extended one large enough to carry it: what the
// inline ibv_query_port of verbs.h prefers over the exported compatibility entry point.
static struct verbs_context *extended_context_with_query_port(struct ibv_context *context) {
    if (context->abi_compat != __VERBS_ABI_IS_EXTENDED) return NULL;
    struct verbs_context *extended =
        (struct verbs_context *)((uint8_t *)context - offsetof(struct verbs_context, context));
    if (extended->sz < sizeof(*extended) - offsetof(struct verbs_context, query_port)) return NULL;
    return extended->query_port != NULL ? extended : NULL;
}

int cverbs_query_port(const cverbs_context *context, uint8_t port, cverbs_port_attributes *out) {
    struct ibv_port_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    struct verbs_context *extended = extended_context_with_query_port(context->context);
    int status = extended != NULL
        ? extended->query_port(context->context, port, &attributes, sizeof(attributes))
        : context->library->query_port_compat(context->context, port, &attributes);
    if (status != 0) return status;
    memset(out, 0, sizeof(*out));
    out->state = attributes.state;
    out->max_mtu = attributes.max_mtu;
    out->active_mtu = attributes.active_mtu;
    out->gid_table_length = attributes.gid_tbl_len;
    out->port_capability_flags = attributes.port_cap_flags;
    out->max_message_size = attributes.max_msg_sz;
    out->lid = attributes.lid;
    out->active_width = attributes.active_width;
    out->active_speed = attributes.active_speed;
    out->physical_state = attributes.phys_state;
    out->link_layer = attributes.link_layer;
    return 0;
}

int cverbs_query_gid(const cverbs_context *context, uint8_t port, int index, uint8_t gid[16]) {
    union ibv_gid value;
    memset(&value, 0, sizeof(value));
    errno = 0;
    int status = context->library->query_gid(context->context, port, index, &value);
    if (status != 0) return errno != 0 ? errno : EINVAL;
    memcpy(gid, value.raw, 16);
    return 0;
}

// MARK: Data plane

struct cverbs_pd {
    const cverbs_library *library;
    struct ibv_pd *pd;
};

struct cverbs_mr {
    const cverbs_library *library;
    struct ibv_mr *mr;
};

struct cverbs_cq {
    const cverbs_library *library;
    struct ibv_comp_channel *channel;
    struct ibv_cq *cq;
};

struct cverbs_qp {
    const cverbs_library *library;
    struct ibv_qp *qp;
};

// libibverbs calls that return an int report failure either as a positive errno or as -1 with errno set,
// depending on the call and the library's age.
static int status_of(int returned) {
    if (returned == 0) return 0;
    if (returned > 0) return returned;
    return errno != 0 ? errno : EIO;
}

static int failed_errno(void) { return errno != 0 ? errno : EIO; }

int cverbs_pd_alloc(const cverbs_context *context, cverbs_pd **out) {
    *out = NULL;
    cverbs_pd *wrapper = calloc(1, sizeof(*wrapper));
    if (wrapper == NULL) return ENOMEM;
    errno = 0;
    wrapper->pd = context->library->alloc_pd(context->context);
    if (wrapper->pd == NULL) {
        int status = failed_errno();
        free(wrapper);
        return status;
    }
    wrapper->library = context->library;
    *out = wrapper;
    return 0;
}

int cverbs_pd_free(cverbs_pd *pd) {
    if (pd == NULL) return 0;
    errno = 0;
    int status = status_of(pd->library->dealloc_pd(pd->pd));
    if (status == 0) free(pd);
    return status;
}

int cverbs_mr_register(cverbs_pd *pd, void *address, size_t length, int remote_write, cverbs_mr **out,
                       uint32_t *lkey, uint32_t *rkey) {
    *out = NULL;
    cverbs_mr *wrapper = calloc(1, sizeof(*wrapper));
    if (wrapper == NULL) return ENOMEM;
    int access = IBV_ACCESS_LOCAL_WRITE | (remote_write ? IBV_ACCESS_REMOTE_WRITE : 0);
    errno = 0;
    wrapper->mr = pd->library->reg_mr(pd->pd, address, length, access);
    if (wrapper->mr == NULL) {
        int status = failed_errno();
        free(wrapper);
        return status;
    }
    wrapper->library = pd->library;
    *lkey = wrapper->mr->lkey;
    *rkey = wrapper->mr->rkey;
    *out = wrapper;
    return 0;
}

int cverbs_mr_deregister(cverbs_mr *mr) {
    if (mr == NULL) return 0;
    errno = 0;
    int status = status_of(mr->library->dereg_mr(mr->mr));
    if (status == 0) free(mr);
    return status;
}

int cverbs_cq_create(const cverbs_context *context, int entries, cverbs_cq **out) {
    *out = NULL;
    cverbs_cq *wrapper = calloc(1, sizeof(*wrapper));
    if (wrapper == NULL) return ENOMEM;
    const cverbs_library *library = context->library;
    errno = 0;
    wrapper->channel = library->create_comp_channel(context->context);
    if (wrapper->channel == NULL) {
        int status = failed_errno();
        free(wrapper);
        return status;
    }
    errno = 0;
    wrapper->cq = library->create_cq(context->context, entries, NULL, wrapper->channel, 0);
    if (wrapper->cq == NULL) {
        int status = failed_errno();
        library->destroy_comp_channel(wrapper->channel);
        free(wrapper);
        return status;
    }
    wrapper->library = library;
    *out = wrapper;
    return 0;
}

int cverbs_cq_destroy(cverbs_cq *cq) {
    if (cq == NULL) return 0;
    errno = 0;
    // Every event taken by cverbs_cq_wait was acknowledged there, so destroy_cq does not wait for acks.
    int status = status_of(cq->library->destroy_cq(cq->cq));
    if (status != 0) return status;
    errno = 0;
    status = status_of(cq->library->destroy_comp_channel(cq->channel));
    free(cq);
    return status;
}

int cverbs_cq_request_notify(cverbs_cq *cq) {
    errno = 0;
    return status_of(cq->cq->context->ops.req_notify_cq(cq->cq, 0));
}

int cverbs_cq_wait(cverbs_cq *cq, int timeout_ms) {
    struct pollfd descriptor = { .fd = cq->channel->fd, .events = POLLIN, .revents = 0 };
    int ready;
    do {
        ready = poll(&descriptor, 1, timeout_ms);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) return failed_errno();
    if (ready == 0) return ETIMEDOUT;
    struct ibv_cq *event_cq = NULL;
    void *event_context = NULL;
    errno = 0;
    if (cq->library->get_cq_event(cq->channel, &event_cq, &event_context) != 0) return failed_errno();
    cq->library->ack_cq_events(event_cq, 1);
    return 0;
}

static uint32_t shim_opcode(enum ibv_wc_opcode opcode) {
    switch (opcode) {
    case IBV_WC_RDMA_WRITE: return CVERBS_WC_RDMA_WRITE;
    case IBV_WC_RECV_RDMA_WITH_IMM: return CVERBS_WC_RECV_RDMA_WITH_IMM;
    case IBV_WC_RECV: return CVERBS_WC_RECV;
    default: return CVERBS_WC_OTHER;
    }
}

int cverbs_cq_poll(cverbs_cq *cq, cverbs_completion *out, int capacity, int *count) {
    *count = 0;
    if (capacity <= 0) return 0;
    struct ibv_wc completions[32];
    int limit = capacity < 32 ? capacity : 32;
    int taken = cq->cq->context->ops.poll_cq(cq->cq, limit, completions);
    if (taken < 0) return EIO;
    for (int i = 0; i < taken; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        out[i].wr_id = completions[i].wr_id;
        out[i].status = completions[i].status;
        // opcode and byte_len are defined only for successful completions.
        out[i].opcode = completions[i].status == IBV_WC_SUCCESS ? shim_opcode(completions[i].opcode) : CVERBS_WC_OTHER;
        out[i].byte_len = completions[i].byte_len;
        out[i].has_imm = (completions[i].wc_flags & IBV_WC_WITH_IMM) ? 1 : 0;
        out[i].imm_data = out[i].has_imm ? be32toh(completions[i].imm_data) : 0;
        out[i].vendor_error = completions[i].vendor_err;
    }
    *count = taken;
    return 0;
}

int cverbs_qp_create(cverbs_pd *pd, cverbs_cq *send_cq, cverbs_cq *recv_cq, uint32_t max_send_wr,
                     uint32_t max_recv_wr, cverbs_qp **out, uint32_t *qp_num) {
    *out = NULL;
    cverbs_qp *wrapper = calloc(1, sizeof(*wrapper));
    if (wrapper == NULL) return ENOMEM;
    struct ibv_qp_init_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.send_cq = send_cq->cq;
    attributes.recv_cq = recv_cq->cq;
    attributes.qp_type = IBV_QPT_RC;
    attributes.sq_sig_all = 0;
    attributes.cap.max_send_wr = max_send_wr;
    attributes.cap.max_recv_wr = max_recv_wr;
    attributes.cap.max_send_sge = 1;
    attributes.cap.max_recv_sge = 1;
    errno = 0;
    wrapper->qp = pd->library->create_qp(pd->pd, &attributes);
    if (wrapper->qp == NULL) {
        int status = failed_errno();
        free(wrapper);
        return status;
    }
    wrapper->library = pd->library;
    *qp_num = wrapper->qp->qp_num;
    *out = wrapper;
    return 0;
}

int cverbs_qp_destroy(cverbs_qp *qp) {
    if (qp == NULL) return 0;
    errno = 0;
    int status = status_of(qp->library->destroy_qp(qp->qp));
    if (status == 0) free(qp);
    return status;
}

static int modify(cverbs_qp *qp, struct ibv_qp_attr *attributes, int mask) {
    errno = 0;
    return status_of(qp->library->modify_qp(qp->qp, attributes, mask));
}

int cverbs_qp_modify_init(cverbs_qp *qp, uint8_t port) {
    struct ibv_qp_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.qp_state = IBV_QPS_INIT;
    attributes.pkey_index = 0;
    attributes.port_num = port;
    attributes.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    return modify(qp, &attributes, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

int cverbs_qp_modify_rtr(cverbs_qp *qp, const cverbs_remote_qp *remote) {
    struct ibv_qp_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.qp_state = IBV_QPS_RTR;
    attributes.path_mtu = (enum ibv_mtu)remote->mtu_code;
    attributes.dest_qp_num = remote->qp_num;
    attributes.rq_psn = remote->psn & 0xffffff;
    // Only WRITEs are used, so one outstanding RDMA READ/atomic is plenty.
    attributes.max_dest_rd_atomic = 1;
    attributes.min_rnr_timer = 12;
    attributes.ah_attr.dlid = remote->lid;
    attributes.ah_attr.sl = 0;
    attributes.ah_attr.src_path_bits = 0;
    attributes.ah_attr.port_num = remote->port;
    if (remote->use_grh) {
        // RoCE has no LIDs: the GRH carries the peer's GID, and the local GID index picks RoCE v2 (UDP/IP).
        attributes.ah_attr.is_global = 1;
        memcpy(attributes.ah_attr.grh.dgid.raw, remote->gid, 16);
        attributes.ah_attr.grh.sgid_index = remote->local_gid_index;
        attributes.ah_attr.grh.hop_limit = 64;
        attributes.ah_attr.grh.flow_label = 0;
        attributes.ah_attr.grh.traffic_class = 0;
    }
    return modify(qp, &attributes, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN
                                       | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

int cverbs_qp_modify_rts(cverbs_qp *qp, uint32_t psn) {
    struct ibv_qp_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.qp_state = IBV_QPS_RTS;
    attributes.sq_psn = psn & 0xffffff;
    // About 67 ms per retry (4.096 µs × 2^14) and 7 retries: a vanished peer shows as an error in well under a second.
    attributes.timeout = 14;
    attributes.retry_cnt = 7;
    // 7 means retry forever when the peer has no RECV posted; credits make that transient, never a dead link.
    attributes.rnr_retry = 7;
    attributes.max_rd_atomic = 1;
    return modify(qp, &attributes, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN
                                       | IBV_QP_MAX_QP_RD_ATOMIC);
}

int cverbs_qp_modify_error(cverbs_qp *qp) {
    struct ibv_qp_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.qp_state = IBV_QPS_ERR;
    return modify(qp, &attributes, IBV_QP_STATE);
}

int cverbs_qp_query_state(cverbs_qp *qp, uint32_t *state) {
    struct ibv_qp_attr attributes;
    struct ibv_qp_init_attr init_attributes;
    memset(&attributes, 0, sizeof(attributes));
    memset(&init_attributes, 0, sizeof(init_attributes));
    errno = 0;
    int status = status_of(qp->library->query_qp(qp->qp, &attributes, IBV_QP_STATE, &init_attributes));
    if (status != 0) return status;
    *state = attributes.qp_state;
    return 0;
}

int cverbs_post_write_imm(cverbs_qp *qp, uint64_t wr_id, const void *local_address, uint32_t length, uint32_t lkey,
                          uint64_t remote_address, uint32_t rkey, uint32_t imm_host_order) {
    struct ibv_sge element = { .addr = (uint64_t)(uintptr_t)local_address, .length = length, .lkey = lkey };
    struct ibv_send_wr request;
    memset(&request, 0, sizeof(request));
    request.wr_id = wr_id;
    request.sg_list = length > 0 ? &element : NULL;
    request.num_sge = length > 0 ? 1 : 0;
    request.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    request.send_flags = IBV_SEND_SIGNALED;
    request.imm_data = htobe32(imm_host_order);
    request.wr.rdma.remote_addr = remote_address;
    request.wr.rdma.rkey = rkey;
    struct ibv_send_wr *bad = NULL;
    errno = 0;
    return status_of(qp->qp->context->ops.post_send(qp->qp, &request, &bad));
}

int cverbs_post_recv(cverbs_qp *qp, uint64_t wr_id) {
    struct ibv_recv_wr request;
    memset(&request, 0, sizeof(request));
    request.wr_id = wr_id;
    request.sg_list = NULL;
    request.num_sge = 0;
    struct ibv_recv_wr *bad = NULL;
    errno = 0;
    return status_of(qp->qp->context->ops.post_recv(qp->qp, &request, &bad));
}

#else

// Built without verbs.h: the library may be present, but this build cannot read its structures. Opening still tells
// an absent library apart from a present one, so the report says which is missing.
int cverbs_built_with_headers(void) { return 0; }

int cverbs_library_open(const char *path, cverbs_library **out, char *message, size_t message_size) {
    *out = NULL;
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *reason = dlerror();
        if (message != NULL && message_size > 0) snprintf(message, message_size, "%s", reason != NULL ? reason : "dlopen failed");
        return CVERBS_LIBRARY_NOT_FOUND;
    }
    dlclose(handle);
    if (message != NULL && message_size > 0) {
        snprintf(message, message_size, "compiled without infiniband/verbs.h (install libibverbs-dev and rebuild)");
    }
    return CVERBS_BUILT_WITHOUT_HEADERS;
}
void cverbs_library_close(cverbs_library *library) { (void)library; }
int cverbs_list_devices(const cverbs_library *library, cverbs_device_entry *entries, int capacity, int *count) {
    (void)library; (void)entries; (void)capacity;
    *count = 0;
    return CVERBS_BUILT_WITHOUT_HEADERS;
}
int cverbs_context_open(const cverbs_library *library, const char *name, cverbs_context **out) {
    (void)library; (void)name;
    *out = NULL;
    return CVERBS_BUILT_WITHOUT_HEADERS;
}
void cverbs_context_close(cverbs_context *context) { (void)context; }
int cverbs_query_device(const cverbs_context *context, cverbs_device_attributes *out) {
    (void)context; (void)out;
    return CVERBS_BUILT_WITHOUT_HEADERS;
}
int cverbs_query_port(const cverbs_context *context, uint8_t port, cverbs_port_attributes *out) {
    (void)context; (void)port; (void)out;
    return CVERBS_BUILT_WITHOUT_HEADERS;
}
int cverbs_query_gid(const cverbs_context *context, uint8_t port, int index, uint8_t gid[16]) {
    (void)context; (void)port; (void)index; (void)gid;
    return CVERBS_BUILT_WITHOUT_HEADERS;
}

#define CVERBS_NO_HEADERS_STUB return CVERBS_BUILT_WITHOUT_HEADERS
int cverbs_pd_alloc(const cverbs_context *c, cverbs_pd **out) { (void)c; *out = NULL; CVERBS_NO_HEADERS_STUB; }
int cverbs_pd_free(cverbs_pd *pd) { (void)pd; CVERBS_NO_HEADERS_STUB; }
int cverbs_mr_register(cverbs_pd *pd, void *a, size_t l, int w, cverbs_mr **out, uint32_t *lk, uint32_t *rk) {
    (void)pd; (void)a; (void)l; (void)w; (void)lk; (void)rk; *out = NULL; CVERBS_NO_HEADERS_STUB;
}
int cverbs_mr_deregister(cverbs_mr *mr) { (void)mr; CVERBS_NO_HEADERS_STUB; }
int cverbs_cq_create(const cverbs_context *c, int e, cverbs_cq **out) { (void)c; (void)e; *out = NULL; CVERBS_NO_HEADERS_STUB; }
int cverbs_cq_destroy(cverbs_cq *cq) { (void)cq; CVERBS_NO_HEADERS_STUB; }
int cverbs_cq_request_notify(cverbs_cq *cq) { (void)cq; CVERBS_NO_HEADERS_STUB; }
int cverbs_cq_wait(cverbs_cq *cq, int t) { (void)cq; (void)t; CVERBS_NO_HEADERS_STUB; }
int cverbs_cq_poll(cverbs_cq *cq, cverbs_completion *o, int c, int *n) { (void)cq; (void)o; (void)c; *n = 0; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_create(cverbs_pd *pd, cverbs_cq *s, cverbs_cq *r, uint32_t ms, uint32_t mr, cverbs_qp **out, uint32_t *n) {
    (void)pd; (void)s; (void)r; (void)ms; (void)mr; (void)n; *out = NULL; CVERBS_NO_HEADERS_STUB;
}
int cverbs_qp_destroy(cverbs_qp *qp) { (void)qp; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_modify_init(cverbs_qp *qp, uint8_t p) { (void)qp; (void)p; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_modify_rtr(cverbs_qp *qp, const cverbs_remote_qp *r) { (void)qp; (void)r; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_modify_rts(cverbs_qp *qp, uint32_t p) { (void)qp; (void)p; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_modify_error(cverbs_qp *qp) { (void)qp; CVERBS_NO_HEADERS_STUB; }
int cverbs_qp_query_state(cverbs_qp *qp, uint32_t *s) { (void)qp; *s = 0; CVERBS_NO_HEADERS_STUB; }
int cverbs_post_write_imm(cverbs_qp *qp, uint64_t w, const void *a, uint32_t l, uint32_t lk, uint64_t ra, uint32_t rk, uint32_t i) {
    (void)qp; (void)w; (void)a; (void)l; (void)lk; (void)ra; (void)rk; (void)i; CVERBS_NO_HEADERS_STUB;
}
int cverbs_post_recv(cverbs_qp *qp, uint64_t w) { (void)qp; (void)w; CVERBS_NO_HEADERS_STUB; }

#endif
