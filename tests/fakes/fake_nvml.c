/*
 * A fake libnvidia-ml.so.1 for tests: serves the NVML calls topodra's nvml backend makes (through the
 * real pynvml), from a key=value text file named by $TOPODRA_FAKE_NVML_CONFIG. Built by the tests:
 *   gcc -shared -fPIC -o libnvidia-ml.so.1 fake_nvml.c
 *
 * Config keys (one per line, '#' comments):
 *   init_error=<code>                 nvmlInit fails with this NVML return code
 *   driver_version=550.54.15          cuda_driver_version=12040
 *   device_count=<n>
 *   device.<i>.uuid / name / bus_id   strings (bus_id as NVML prints it: 00000000:0A:00.0)
 *   device.<i>.index / minor / brand / arch / cc_major / cc_minor / numa / memory_total / pci_device_id
 *   device.<i>.nvlink.<link>=<remote bus id>   an active NVLink to that PCI address
 *   device.<i>.fabric_cluster=<32 hex digits>  device.<i>.fabric_clique=<n>  device.<i>.fabric_state=<n>
 *   device.<i>.fail.<function name>=<code>     that call fails with that code for this device
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEV 64
#define MAX_LINKS 18
#define MAX_FAIL 8
#define MAX_FAIL_NAME 64

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_INSUFFICIENT_SIZE = 7, NVML_ERROR_UNKNOWN = 999
};

typedef struct {
    char bus_id_legacy[16];
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
} nvmlPciInfo_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned char cluster_uuid[16];
    nvmlReturn_t status;
    unsigned int clique_id;
    unsigned int state;
    unsigned int health_mask;
} nvmlGpuFabricInfo_v2_t;

struct fake_dev {
    char uuid[96], name[96], bus_id[32];
    unsigned int index, minor, brand, arch, pci_device_id;
    int cc_major, cc_minor, numa;
    unsigned long long memory_total;
    char nvlink[MAX_LINKS][32];
    unsigned char fabric_cluster[16];
    int has_fabric;
    unsigned int fabric_clique, fabric_state;
    char fail_name[MAX_FAIL][MAX_FAIL_NAME];
    int fail_code[MAX_FAIL];
    int nfail;
};
typedef struct fake_dev *nvmlDevice_t;

static struct fake_dev devs[MAX_DEV];
static int ndev;
static int initialised;
static char driver_version[80] = "550.54.15";
static int cuda_driver_version = 12040;

static void copy(char *dst, size_t n, const char *src) { strncpy(dst, src, n - 1); dst[n - 1] = 0; }

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void set_dev(struct fake_dev *d, const char *key, const char *val) {
    if (!strcmp(key, "uuid")) copy(d->uuid, sizeof d->uuid, val);
    else if (!strcmp(key, "name")) copy(d->name, sizeof d->name, val);
    else if (!strcmp(key, "bus_id")) copy(d->bus_id, sizeof d->bus_id, val);
    else if (!strcmp(key, "index")) d->index = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "minor")) d->minor = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "brand")) d->brand = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "arch")) d->arch = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "pci_device_id")) d->pci_device_id = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "cc_major")) d->cc_major = atoi(val);
    else if (!strcmp(key, "cc_minor")) d->cc_minor = atoi(val);
    else if (!strcmp(key, "numa")) d->numa = atoi(val);
    else if (!strcmp(key, "memory_total")) d->memory_total = strtoull(val, 0, 0);
    else if (!strncmp(key, "nvlink.", 7)) {
        int l = atoi(key + 7);
        if (l >= 0 && l < MAX_LINKS) copy(d->nvlink[l], sizeof d->nvlink[l], val);
    } else if (!strcmp(key, "fabric_cluster")) {
        for (int i = 0; i < 16 && val[2 * i] && val[2 * i + 1]; i++)
            d->fabric_cluster[i] = (unsigned char)(hexval(val[2 * i]) * 16 + hexval(val[2 * i + 1]));
        d->has_fabric = 1;
    } else if (!strcmp(key, "fabric_clique")) d->fabric_clique = (unsigned)strtoul(val, 0, 0);
    else if (!strcmp(key, "fabric_state")) d->fabric_state = (unsigned)strtoul(val, 0, 0);
    else if (!strncmp(key, "fail.", 5) && d->nfail < MAX_FAIL) {
        copy(d->fail_name[d->nfail], MAX_FAIL_NAME, key + 5);
        d->fail_code[d->nfail++] = atoi(val);
    }
}

static int init_error;

static void load(void) {
    memset(devs, 0, sizeof devs);
    ndev = 0;
    init_error = 0;
    for (int i = 0; i < MAX_DEV; i++) { devs[i].numa = -1; devs[i].fabric_state = 3; devs[i].index = (unsigned)i; devs[i].minor = (unsigned)i; }
    const char *path = getenv("TOPODRA_FAKE_NVML_CONFIG");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) { init_error = 9; return; } /* NVML_ERROR_DRIVER_NOT_LOADED */
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        const char *key = line, *val = eq + 1;
        if (!strcmp(key, "init_error")) init_error = atoi(val);
        else if (!strcmp(key, "driver_version")) copy(driver_version, sizeof driver_version, val);
        else if (!strcmp(key, "cuda_driver_version")) cuda_driver_version = atoi(val);
        else if (!strcmp(key, "device_count")) { ndev = atoi(val); if (ndev > MAX_DEV) ndev = MAX_DEV; }
        else if (!strncmp(key, "device.", 7)) {
            char *end;
            long i = strtol(key + 7, &end, 10);
            if (*end == '.' && i >= 0 && i < MAX_DEV) set_dev(&devs[i], end + 1, val);
        }
    }
    fclose(f);
}

static nvmlReturn_t check(nvmlDevice_t d, const char *fn) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (d < devs || d >= devs + ndev) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < d->nfail; i++)
        if (!strcmp(d->fail_name[i], fn)) return d->fail_code[i];
    return NVML_SUCCESS;
}

static nvmlReturn_t put_str(char *dst, unsigned int len, const char *src) {
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

#define API __attribute__((visibility("default")))

API nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    load();
    if (init_error) return init_error;
    initialised++;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
API nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}
API const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 9: return "Driver Not Loaded";
    case 15: return "GPU is lost";
    default: return "Unknown Error";
    }
}
API nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int len) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    return put_str(v, len, driver_version);
}
API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *v = cuda_driver_version;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }
API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *n = (unsigned)ndev;
    return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (i >= (unsigned)ndev) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &devs[i];
    return check(*d, "nvmlDeviceGetHandleByIndex_v2");
}


API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *v) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetIndex"); if (r) return r;
    *v = d->index; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *v) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetMinorNumber"); if (r) return r;
    *v = d->minor; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *v, unsigned int len) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetUUID"); if (r) return r;
    return put_str(v, len, d->uuid);
}
API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *v, unsigned int len) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetName"); if (r) return r;
    return put_str(v, len, d->name);
}
API nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t d, unsigned int *v) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetBrand"); if (r) return r;
    *v = d->brand; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t d, unsigned int *v) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetArchitecture"); if (r) return r;
    *v = d->arch; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetCudaComputeCapability"); if (r) return r;
    *major = d->cc_major; *minor = d->cc_minor; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetMemoryInfo"); if (r) return r;
    m->total = d->memory_total; m->used = d->memory_total / 100; m->free = m->total - m->used;
    return NVML_SUCCESS;
}
static void fill_pci(nvmlPciInfo_t *p, const char *bus_id, unsigned int dev_id) {
    memset(p, 0, sizeof *p);
    copy(p->bus_id, sizeof p->bus_id, bus_id);
    copy(p->bus_id_legacy, sizeof p->bus_id_legacy, bus_id);
    unsigned int dom = 0, bus = 0, dv = 0, fnc = 0;
    sscanf(bus_id, "%x:%x:%x.%x", &dom, &bus, &dv, &fnc);
    p->domain = dom; p->bus = bus; p->device = dv; p->pci_device_id = dev_id;
}
API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetPciInfo_v3"); if (r) return r;
    fill_pci(p, d->bus_id, d->pci_device_id); return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetNumaNodeId(nvmlDevice_t d, unsigned int *v) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetNumaNodeId"); if (r) return r;
    if (d->numa < 0) return NVML_ERROR_NOT_SUPPORTED;
    *v = (unsigned)d->numa; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned int link, unsigned int *active) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetNvLinkState"); if (r) return r;
    if (link >= MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    *active = d->nvlink[link][0] ? 1 : 0; return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned int link, nvmlPciInfo_t *p) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetNvLinkRemotePciInfo_v2"); if (r) return r;
    if (link >= MAX_LINKS || !d->nvlink[link][0]) return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(p, d->nvlink[link], 0); return NVML_SUCCESS;
}
API nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t d, nvmlGpuFabricInfo_v2_t *info) {
    nvmlReturn_t r = check(d, "nvmlDeviceGetGpuFabricInfoV"); if (r) return r;
    if (!d->has_fabric) return NVML_ERROR_NOT_SUPPORTED;
    memcpy(info->cluster_uuid, d->fabric_cluster, 16);
    info->status = NVML_SUCCESS;
    info->clique_id = d->fabric_clique;
    info->state = d->fabric_state;
    info->health_mask = 0;
    return NVML_SUCCESS;
}
