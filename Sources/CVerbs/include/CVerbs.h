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

#ifdef __cplusplus
}
#endif

#endif
