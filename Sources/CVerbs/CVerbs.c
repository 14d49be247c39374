// The shim behind CVerbs.h. verbs.h gives the structure layouts and constants; every libibverbs function is reached
// through a pointer from dlsym, never by name, so this object has no undefined ibv_* symbol for the linker to need.
// Where verbs.h implements a call inline (ibv_query_port picks the provider's extended op when the context has
// one), the same choice is made here by hand.
#include "CVerbs.h"

#include <dlfcn.h>
#include <endian.h>
#include <errno.h>
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

#endif
