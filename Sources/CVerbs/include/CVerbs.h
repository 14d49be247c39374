// A narrow C seam over libibverbs, opened at run time with dlopen. Nothing here includes verbs.h: Swift sees only
// these plain structs and functions, and the package never links libibverbs, so the binaries start where it is absent.
//
// Every function returns 0 on success or a positive errno-style code. Calls that can fail inside libibverbs report
// the errno it left.
#ifndef NVFP4_CVERBS_H
#define NVFP4_CVERBS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Status codes of the shim itself (libibverbs failures return their errno, all below 4096).
enum {
    /// dlopen failed; the message buffer holds dlerror's text.
    CVERBS_LIBRARY_NOT_FOUND = 10001,
    /// A required entry point is missing; the message buffer names it.
    CVERBS_SYMBOL_NOT_FOUND = 10002,
    /// This build was compiled without infiniband/verbs.h, so it cannot interpret the library's structures.
    CVERBS_BUILT_WITHOUT_HEADERS = 10003,
    /// No device of the requested name.
    CVERBS_DEVICE_NOT_FOUND = 10004,
};

/// An opened libibverbs and its resolved entry points.
typedef struct cverbs_library cverbs_library;
/// An opened device (an ibv_context).
typedef struct cverbs_context cverbs_context;

/// One entry of the device list.
typedef struct {
    char name[64];
    /// The node GUID in host byte order.
    uint64_t node_guid;
} cverbs_device_entry;

/// The fields of ibv_device_attr that a user checking a node needs.
typedef struct {
    char firmware_version[64];
    uint32_t vendor_id;
    uint32_t vendor_part_id;
    uint32_t hardware_version;
    uint8_t physical_port_count;
    int32_t max_qp;
    int32_t max_qp_wr;
    int32_t max_cq;
    int32_t max_cqe;
    int32_t max_mr;
    uint64_t max_mr_size;
} cverbs_device_attributes;

/// The fields of ibv_port_attr, as their raw verbs encodings (enum ibv_port_state, enum ibv_mtu, IBV_LINK_LAYER_*,
/// the active_width and active_speed bit codes).
typedef struct {
    uint32_t state;
    uint32_t max_mtu;
    uint32_t active_mtu;
    int32_t gid_table_length;
    uint32_t port_capability_flags;
    uint32_t max_message_size;
    uint16_t lid;
    uint8_t active_width;
    uint8_t active_speed;
    uint8_t physical_state;
    uint8_t link_layer;
} cverbs_port_attributes;

/// 1 when this build was compiled against infiniband/verbs.h, 0 when not (then no library can be used).
int cverbs_built_with_headers(void);

/// Opens `path` (a file name for the dynamic linker, or a path) and resolves the entry points. On failure `*out` is
/// NULL and `message` (of `message_size` bytes) says what was missing.
int cverbs_library_open(const char *path, cverbs_library **out, char *message, size_t message_size);
void cverbs_library_close(cverbs_library *library);

/// Lists up to `capacity` devices into `entries`; `*count` is the total number present (which may exceed `capacity`).
/// A kernel without RDMA support makes libibverbs fail with ENOSYS.
int cverbs_list_devices(const cverbs_library *library, cverbs_device_entry *entries, int capacity, int *count);

/// Opens the device called `name`.
int cverbs_context_open(const cverbs_library *library, const char *name, cverbs_context **out);
void cverbs_context_close(cverbs_context *context);

int cverbs_query_device(const cverbs_context *context, cverbs_device_attributes *out);
int cverbs_query_port(const cverbs_context *context, uint8_t port, cverbs_port_attributes *out);
/// Reads GID table entry `index` of `port` as 16 raw bytes (network order).
int cverbs_query_gid(const cverbs_context *context, uint8_t port, int index, uint8_t gid[16]);

// MARK: Data plane
//
// Objects are wrapped so that each remembers the library (to reach its entry points) and what it was made from.
// Destroying one that is still in use by another (a PD with registered regions, a CQ with a QP) fails with EBUSY
// in libibverbs; callers destroy in reverse order of creation.

/// A protection domain.
typedef struct cverbs_pd cverbs_pd;
/// A registered memory region.
typedef struct cverbs_mr cverbs_mr;
/// A completion queue with its own completion channel, so that an idle waiter sleeps in the kernel.
typedef struct cverbs_cq cverbs_cq;
/// A reliable-connected queue pair.
typedef struct cverbs_qp cverbs_qp;

/// Queue pair states, in enum ibv_qp_state's numbering.
enum {
    CVERBS_QPS_RESET = 0,
    CVERBS_QPS_INIT = 1,
    CVERBS_QPS_RTR = 2,
    CVERBS_QPS_RTS = 3,
    CVERBS_QPS_SQD = 4,
    CVERBS_QPS_SQE = 5,
    CVERBS_QPS_ERR = 6,
};

/// Completion opcodes this shim reports (its own numbering, mapped from enum ibv_wc_opcode).
enum {
    CVERBS_WC_OTHER = 0,
    CVERBS_WC_RDMA_WRITE = 1,
    CVERBS_WC_RECV_RDMA_WITH_IMM = 2,
    CVERBS_WC_RECV = 3,
};

/// One work completion: the fields the data plane reads from ibv_wc.
typedef struct {
    uint64_t wr_id;
    /// enum ibv_wc_status (0 = success).
    uint32_t status;
    /// One of CVERBS_WC_*.
    uint32_t opcode;
    uint32_t byte_len;
    /// Host byte order (verbs carries it big-endian on the wire).
    uint32_t imm_data;
    /// 1 when imm_data is valid.
    uint32_t has_imm;
    uint32_t vendor_error;
} cverbs_completion;

/// What RTR needs of the peer. RoCE and routed InfiniBand address the peer by GID, which puts a GRH on every packet.
typedef struct {
    uint32_t qp_num;
    uint32_t psn;
    /// enum ibv_mtu code (1 = 256 … 5 = 4096).
    uint32_t mtu_code;
    uint16_t lid;
    uint8_t gid[16];
    /// The local GID index the GRH's source address comes from.
    uint8_t local_gid_index;
    /// The local port the path leaves from (the address vector's port), not the peer's.
    uint8_t port;
    uint8_t use_grh;
} cverbs_remote_qp;

int cverbs_pd_alloc(const cverbs_context *context, cverbs_pd **out);
int cverbs_pd_free(cverbs_pd *pd);

/// Registers `length` bytes at `address` for local write, and remote write when `remote_write` is non-zero.
int cverbs_mr_register(cverbs_pd *pd, void *address, size_t length, int remote_write, cverbs_mr **out,
                       uint32_t *lkey, uint32_t *rkey);
int cverbs_mr_deregister(cverbs_mr *mr);

/// A CQ of at least `entries` entries bound to a new completion channel.
int cverbs_cq_create(const cverbs_context *context, int entries, cverbs_cq **out);
int cverbs_cq_destroy(cverbs_cq *cq);
/// Arms the CQ: the next completion raises an event on its channel.
int cverbs_cq_request_notify(cverbs_cq *cq);
/// Waits up to `timeout_ms` (negative: forever) for the armed CQ's event, then takes and acknowledges it.
/// ETIMEDOUT when none came. The caller re-arms and then polls, so a completion that raced the arming is not missed.
int cverbs_cq_wait(cverbs_cq *cq, int timeout_ms);
/// Takes up to `capacity` completions; `*count` says how many.
int cverbs_cq_poll(cverbs_cq *cq, cverbs_completion *out, int capacity, int *count);

/// An RC QP on `pd` whose sends complete on `send_cq` and receives on `recv_cq`. `*qp_num` is its number.
int cverbs_qp_create(cverbs_pd *pd, cverbs_cq *send_cq, cverbs_cq *recv_cq, uint32_t max_send_wr,
                     uint32_t max_recv_wr, cverbs_qp **out, uint32_t *qp_num);
int cverbs_qp_destroy(cverbs_qp *qp);
/// RESET → INIT on `port`, allowing the peer to RDMA-write into this side's regions.
int cverbs_qp_modify_init(cverbs_qp *qp, uint8_t port);
/// INIT → RTR, connected to `remote`.
int cverbs_qp_modify_rtr(cverbs_qp *qp, const cverbs_remote_qp *remote);
/// RTR → RTS with this side's send PSN.
int cverbs_qp_modify_rts(cverbs_qp *qp, uint32_t psn);
/// Any state → ERR: outstanding work requests complete with a flush error.
int cverbs_qp_modify_error(cverbs_qp *qp);
/// The QP's current state (CVERBS_QPS_*).
int cverbs_qp_query_state(cverbs_qp *qp, uint32_t *state);

/// Posts an RDMA WRITE with immediate of `length` bytes from `local_address` (in the region of `lkey`) to
/// `remote_address` (in the peer's region of `rkey`). Always signalled, so every write yields a send completion.
int cverbs_post_write_imm(cverbs_qp *qp, uint64_t wr_id, const void *local_address, uint32_t length, uint32_t lkey,
                          uint64_t remote_address, uint32_t rkey, uint32_t imm_host_order);
/// Posts a receive with no buffer: a WRITE with immediate consumes one and delivers only the immediate.
int cverbs_post_recv(cverbs_qp *qp, uint64_t wr_id);

#ifdef __cplusplus
}
#endif

#endif
