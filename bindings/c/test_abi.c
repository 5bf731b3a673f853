/*
 * test_abi.c — exercises every function of the recon C ABI (include/recon.h) and its error paths,
 * and generates a real asset with the tiny model.
 *
 *     test_abi MODEL_DIR
 *
 * MODEL_DIR is the tiny model fixture (tests/fixtures/model_tiny; the MODEL_DIR environment
 * variable is read when no argument is given). Broken copies of it (malformed pipeline.json,
 * truncated or altered safetensors) and the exported files are written to a temporary directory
 * that is removed at the end. The generation runs on the CPU with 2 + 2 sampler steps: its
 * Gaussians, mesh, progress reports, exports (GLB, PLY, OBJ) and small turntables (frames through
 * the callback, PNG folders, MP4) are checked, a second run is
 * cancelled from another thread, and a third run shows the model still works. A photo (RGB,
 * no alpha) runs through background removal with a tiny BiRefNet written from
 * tests/fixtures/birefnet_tiny (MODEL_DIR/../birefnet_tiny), with the default and the TRELLIS
 * guidance formula. The last line printed is "N passed, M failed" (parsed by CI); the exit
 * status is nonzero when M > 0.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, setenv, nftw, clock_gettime, nanosleep */

#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "recon.h"

/* ---------------------------------------------------------------------------------------------
 * Minimal assertions: each CHECK counts one check; a failure prints where and goes on.
 */

static int g_passed;
static int g_failed;

static void check_impl(int ok, const char *what, const char *detail, int line) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        fprintf(stderr, "FAIL test_abi.c:%d: %s%s%s\n", line, what, detail ? " -- " : "",
                detail ? detail : "");
    }
}

#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, NULL, __LINE__)
/* CHECK with an extra message printed on failure (e.g. the library's error text). */
#define CHECK_MSG(cond, msg) check_impl((cond) ? 1 : 0, #cond, (msg), __LINE__)

/* Checks a status; on mismatch prints both codes' names and `detail`. */
static void check_status_impl(recon_status got, recon_status want, const char *expr,
                              const char *detail, int line) {
    if (got == want) {
        g_passed++;
        return;
    }
    g_failed++;
    fprintf(stderr, "FAIL test_abi.c:%d: %s returned %d (%s), expected %d (%s)%s%s\n", line, expr,
            (int)got, recon_status_string(got), (int)want, recon_status_string(want),
            detail && *detail ? " -- " : "", detail ? detail : "");
}

#define CHECK_STATUS(expr, want) check_status_impl((expr), (want), #expr, NULL, __LINE__)
/* As CHECK_STATUS, printing the model's last error on mismatch. */
#define CHECK_STATUS_M(model, expr, want)                                                    \
    do {                                                                                     \
        recon_status st_ = (expr);                                                           \
        check_status_impl(st_, (want), #expr, recon_model_last_error(model), __LINE__);      \
    } while (0)

static int contains(const char *haystack, const char *needle) {
    return haystack && needle && strstr(haystack, needle) != NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Files: the temporary directory and broken copies of the tiny model.
 */

/* The checkpoint the broken copies alter (tests/fixtures/model_tiny/README.md). */
#define TINY_STEM "ckpts/ss_dec_conv3d_tiny_fp16"
#define TINY_STEM_FILE "ss_dec_conv3d_tiny_fp16."

/* The networks the tiny model loads, in recon_model_network's order: pipeline.json's models by
 * key, then the image encoder (pipeline.json's image_cond_model). recon runs all of them. */
static const struct {
    const char *key, *class_name, *stem;
} k_tiny_networks[] = {
    {"slat_decoder_gs", "SLatGaussianDecoder", "ckpts/slat_dec_gs_swin8_tiny_fp16"},
    {"slat_decoder_mesh", "SLatMeshDecoder", "ckpts/slat_dec_mesh_swin8_tiny_fp16"},
    {"slat_decoder_rf", "SLatRadianceFieldDecoder", "ckpts/slat_dec_rf_swin8_tiny_fp16"},
    {"slat_flow_model", "SLatFlowModel", "ckpts/slat_flow_img_dit_tiny_fp16"},
    {"sparse_structure_decoder", "SparseStructureDecoder", TINY_STEM},
    {"sparse_structure_flow_model", "SparseStructureFlowModel", "ckpts/ss_flow_img_dit_tiny_fp16"},
    {"image_cond_model", "DinoVisionTransformer", "ckpts/dinov2_tiny"},
};
#define TINY_NUM_NETWORKS (sizeof k_tiny_networks / sizeof k_tiny_networks[0])

/* Sampler steps of the test generations (pipeline.json's 25 + 25 would take minutes on a CPU). */
#define GEN_SS_STEPS 2
#define GEN_SLAT_STEPS 2

static char g_tmp[256];      /* temporary directory, removed at exit */
static const char *g_model;  /* the tiny model directory */

/* A 4x4 red RGBA PNG (bindings/c/testdata/red_4x4.png). */
static const unsigned char k_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
    0x52, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0x08, 0x06, 0x00, 0x00, 0x00, 0xa9,
    0xf1, 0x9e, 0x7e, 0x00, 0x00, 0x00, 0x12, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8,
    0xcf, 0xc0, 0xf0, 0x1f, 0x19, 0x33, 0x90, 0x2e, 0x00, 0x00, 0x3c, 0x40, 0x1f, 0xe1, 0x1a,
    0xf3, 0xa5, 0x48, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

/* The PNG is fully opaque, which preprocessing refuses without background removal (NULL params,
 * v1 structs, RECON_BACKGROUND_NEVER). Generations use this cut-out instead: raw RGBA pixels of a
 * shaded disc on a transparent background, filled by make_cutout(). */
#define CUTOUT_SIDE 64
static unsigned char g_cutout[CUTOUT_SIDE * CUTOUT_SIDE * 4];

static void make_cutout(void) {
    for (int y = 0; y < CUTOUT_SIDE; y++) {
        for (int x = 0; x < CUTOUT_SIDE; x++) {
            unsigned char *p = g_cutout + 4 * (y * CUTOUT_SIDE + x);
            double dx = x - 31.5, dy = y - 31.5;
            p[0] = (unsigned char)(40 + 3 * x);
            p[1] = (unsigned char)(200 - 2 * y);
            p[2] = 120;
            p[3] = dx * dx + dy * dy < 24.0 * 24.0 ? 255 : 0;
        }
    }
}

/* A photo: raw RGB pixels (no alpha at all) of a bright disc on a dark background, filled by
 * make_photo(); only background removal makes it usable with preprocessing. */
#define PHOTO_W 80
#define PHOTO_H 60
static unsigned char g_photo[PHOTO_W * PHOTO_H * 3];

static void make_photo(void) {
    for (int y = 0; y < PHOTO_H; y++) {
        for (int x = 0; x < PHOTO_W; x++) {
            unsigned char *p = g_photo + 3 * (y * PHOTO_W + x);
            int inside = (x - 40) * (x - 40) + (y - 30) * (y - 30) < 300;
            p[0] = inside ? 230 : 20;
            p[1] = inside ? 115 : 10;
            p[2] = (unsigned char)(x * 3);
        }
    }
}

/* out = a/b; a path that does not fit is a bug of this test, so it stops here. */
static void path_join(char *out, size_t len, const char *a, const char *b) {
    int n = snprintf(out, len, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= len) {
        fprintf(stderr, "path too long: %s/%s\n", a, b);
        exit(2);
    }
}

/* Reads a whole file (malloc'ed); NULL on failure. */
static unsigned char *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *bytes = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        bytes = malloc((size_t)n + 1);
        if (bytes && fread(bytes, 1, (size_t)n, f) != (size_t)n) {
            free(bytes);
            bytes = NULL;
        }
    }
    fclose(f);
    *size = bytes ? (size_t)n : 0;
    return bytes;
}

static int write_all(const char *path, const void *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(bytes, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

/* Replaces the first `from` in bytes[0..size) by `to` (same length); 1 when found. */
static int replace_once(unsigned char *bytes, size_t size, const char *from, const char *to) {
    size_t n = strlen(from);
    if (strlen(to) != n) return 0;
    for (size_t i = 0; i + n <= size; i++) {
        if (memcmp(bytes + i, from, n) == 0) {
            memcpy(bytes + i, to, n);
            return 1;
        }
    }
    return 0;
}

/* Copies every file of the tiny model's ckpts/ except TINY_STEM's into dir/ckpts; 1 on success. */
static int copy_other_checkpoints(const char *dir) {
    char src_dir[512], src[512], dst[512], ckpts[512];
    path_join(src_dir, sizeof src_dir, g_model, "ckpts");
    path_join(ckpts, sizeof ckpts, dir, "ckpts");
    DIR *d = opendir(src_dir);
    if (!d) return 0;
    int ok = 1;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        const char *name = entry->d_name;
        if (name[0] == '.' || strncmp(name, TINY_STEM_FILE, strlen(TINY_STEM_FILE)) == 0) continue;
        path_join(src, sizeof src, src_dir, name);
        path_join(dst, sizeof dst, ckpts, name);
        size_t size = 0;
        unsigned char *bytes = read_all(src, &size);
        ok &= bytes != NULL && write_all(dst, bytes, size);
        free(bytes);
    }
    closedir(d);
    return ok;
}

/* How a copy of the tiny model is broken. */
typedef struct {
    const char *pipeline_json;     /* replaces pipeline.json when not NULL */
    int skip_config;               /* leave out <stem>.json */
    size_t truncate_to;            /* cut the safetensors file to this many bytes when > 0 */
    int garbage_header;            /* overwrite the safetensors JSON header with '!' */
    const char *from, *to;         /* same-length edit inside the safetensors header */
} breakage;

/* Writes a copy of the tiny model to g_tmp/<name>, broken as `how` says; returns its path. */
static const char *broken_model(const char *name, breakage how) {
    static char dir[512];
    char src[512], dst[512];
    path_join(dir, sizeof dir, g_tmp, name);
    path_join(dst, sizeof dst, dir, "ckpts");
    if (mkdir(dir, 0700) != 0 || mkdir(dst, 0700) != 0) return NULL;

    size_t size = 0;
    unsigned char *bytes = NULL;
    int ok = copy_other_checkpoints(dir);
    /* pipeline.json */
    path_join(dst, sizeof dst, dir, "pipeline.json");
    if (how.pipeline_json) {
        ok &= write_all(dst, how.pipeline_json, strlen(how.pipeline_json));
    } else {
        path_join(src, sizeof src, g_model, "pipeline.json");
        ok &= (bytes = read_all(src, &size)) != NULL && write_all(dst, bytes, size);
        free(bytes);
    }
    /* <stem>.json */
    if (!how.skip_config) {
        path_join(src, sizeof src, g_model, TINY_STEM ".json");
        path_join(dst, sizeof dst, dir, TINY_STEM ".json");
        ok &= (bytes = read_all(src, &size)) != NULL && write_all(dst, bytes, size);
        free(bytes);
    }
    /* <stem>.safetensors: 8-byte little-endian header length, JSON header, data. */
    path_join(src, sizeof src, g_model, TINY_STEM ".safetensors");
    path_join(dst, sizeof dst, dir, TINY_STEM ".safetensors");
    bytes = read_all(src, &size);
    ok &= bytes != NULL && size > 8;
    if (ok) {
        uint64_t header_len = 0;
        for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
        ok &= header_len + 8 <= size;
        if (ok && how.garbage_header) memset(bytes + 8, '!', (size_t)header_len);
        if (ok && how.from) ok &= replace_once(bytes + 8, (size_t)header_len, how.from, how.to);
        if (how.truncate_to > 0 && how.truncate_to < size) size = how.truncate_to;
        ok &= write_all(dst, bytes, size);
    }
    free(bytes);
    return ok ? dir : NULL;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* ---------------------------------------------------------------------------------------------
 * Loading helpers.
 */

/* Loads `model` on the CPU; returns the status, the model in *out and the message in err. */
static recon_status load_cpu(const char *model_dir, recon_model **out, char *err, size_t len) {
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = model_dir;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    return recon_load(&lp, out, err, len);
}

/* Expects loading `dir` to fail with `want`, the message naming `needle` (NULL: non-empty). */
static void expect_load_failure(const char *what, const char *dir, recon_status want,
                                const char *needle) {
    recon_model *model = (recon_model *)&g_tmp; /* sentinel: must stay untouched */
    char err[1024] = "";
    CHECK_MSG(dir != NULL, what);
    if (!dir) return;
    recon_status st = load_cpu(dir, &model, err, sizeof err);
    printf("%s -> %s: %s\n", what, recon_status_string(st), err);
    check_status_impl(st, want, what, err, __LINE__);
    CHECK_MSG(model == (recon_model *)&g_tmp, what);
    CHECK_MSG(needle ? contains(err, needle) : err[0] != '\0', err);
}

/* ---------------------------------------------------------------------------------------------
 * Versions, statuses, struct layout.
 */

static void test_versions(void) {
    CHECK(recon_abi_version() == RECON_ABI_VERSION);
    const char *v = recon_version_string();
    CHECK(v != NULL && v[0] != '\0');
    CHECK(recon_version_string() == v); /* static storage */
    int n = recon_cuda_device_count();
    CHECK(n >= 0);
    printf("recon %s, ABI %u, %d CUDA device(s)\n", v, (unsigned)recon_abi_version(), n);
}

static void test_status_strings(void) {
    static const struct {
        recon_status code;
        int number;
        const char *text;
    } known[] = {
        {RECON_OK, 0, "ok"},
        {RECON_ERR_INVALID_ARGUMENT, 1, "invalid argument"},
        {RECON_ERR_IO, 2, "I/O error"},
        {RECON_ERR_NETWORK, 3, "network error"},
        {RECON_ERR_FORMAT, 4, "malformed file"},
        {RECON_ERR_CHECKPOINT, 5, "checkpoint does not match the network"},
        {RECON_ERR_UNSUPPORTED, 6, "not supported by this build"},
        {RECON_ERR_CANCELLED, 7, "cancelled"},
        {RECON_ERR_OUT_OF_MEMORY, 8, "out of memory"},
        {RECON_ERR_DEVICE, 9, "device error"},
        {RECON_ERR_INTERNAL, 10, "internal error"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        CHECK(known[i].code == known[i].number); /* stable numbers */
        const char *s = recon_status_string(known[i].code);
        CHECK_MSG(s != NULL && strcmp(s, known[i].text) == 0, s);
    }
    const int unknown[] = {-1, 11, 99, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        CHECK(strcmp(recon_status_string(unknown[i]), "unknown status") == 0);
}

/* The struct sizes are printed for the bindings (bindings/python hard-codes the same table). */
static void test_struct_layout(void) {
#define SHOW(T) printf("sizeof(" #T ") = %zu\n", sizeof(T))
    SHOW(recon_load_params);
    SHOW(recon_network_info);
    SHOW(recon_image);
    SHOW(recon_run_params);
    SHOW(recon_progress);
    SHOW(recon_gaussians);
    SHOW(recon_mesh);
    SHOW(recon_camera);
    SHOW(recon_turntable_params);
    SHOW(recon_frame);
    SHOW(recon_textured_export_params);
#undef SHOW
#if UINTPTR_MAX == UINT64_MAX
    /* LP64 (Linux, macOS x86-64/arm64): the table bindings/python/tests/test_abi.py checks. */
    CHECK(sizeof(recon_load_params) == 64); /* v2: low_vram, vggt_model; v3: background_model */
    CHECK(offsetof(recon_load_params, low_vram) == 40);
    CHECK(offsetof(recon_load_params, vggt_model) == 48);
    CHECK(offsetof(recon_load_params, background_model) == 56);
    CHECK(sizeof(recon_network_info) == 40);
    CHECK(sizeof(recon_image) == 40);
    CHECK(sizeof(recon_run_params) == 72); /* v3: estimate_cameras appended */
    CHECK(offsetof(recon_run_params, remove_background) == 56); /* v2 */
    CHECK(offsetof(recon_run_params, guidance) == 60);
    CHECK(offsetof(recon_run_params, estimate_cameras) == 64);
    CHECK(sizeof(recon_progress) == 16);
    CHECK(sizeof(recon_gaussians) == 56);
    CHECK(sizeof(recon_mesh) == 48);
    CHECK(sizeof(recon_camera) == 96);
    CHECK(sizeof(recon_turntable_params) == 48);
    CHECK(offsetof(recon_turntable_params, background) == 24);
    CHECK(offsetof(recon_turntable_params, device) == 36);
    CHECK(offsetof(recon_turntable_params, mesh_ssaa) == 44);
    CHECK(sizeof(recon_frame) == 32);
    CHECK(sizeof(recon_textured_export_params) == 72);
    CHECK(offsetof(recon_textured_export_params, device) == 52);
    CHECK(offsetof(recon_textured_export_params, seed) == 64);
    CHECK(offsetof(recon_frame, rgba) == 24);
    CHECK(offsetof(recon_load_params, model) == 8);
    CHECK(offsetof(recon_load_params, log_callback) == 24);
    CHECK(offsetof(recon_run_params, seed) == 8);
    CHECK(offsetof(recon_run_params, progress_callback) == 40);
    CHECK(offsetof(recon_image, data) == 8);
    CHECK(offsetof(recon_image, stride) == 32);
    CHECK(offsetof(recon_network_info, num_elements) == 8);
    CHECK(offsetof(recon_network_info, stem) == 32);
#endif
}

/* A program built against the v1 header owns 40 bytes: the plain init symbol (what it calls)
 * writes exactly those and reports the v1 size; the sized init writes what it is told. */
static void test_load_params_versions(void) {
    unsigned char buf[sizeof(recon_load_params) + 16];
    memset(buf, 0xAB, sizeof buf);
    (recon_load_params_init)((recon_load_params *)buf);
    uint32_t size;
    memcpy(&size, buf, sizeof size);
    CHECK(size == 40);
    int untouched = 1;
    for (size_t i = 40; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 40), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 40);
    untouched = 1;
    for (size_t i = 40; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    /* A newer caller's larger struct: clamped to this library's struct, the rest untouched. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, sizeof buf), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == sizeof(recon_load_params));
    CHECK(buf[sizeof(recon_load_params)] == 0xAB);

    /* v2 (56 bytes): low_vram and vggt_model, nothing after them. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 56), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 56);
    CHECK(((recon_load_params *)buf)->low_vram == 0);
    CHECK(((recon_load_params *)buf)->vggt_model == NULL);
    untouched = 1;
    for (size_t i = 56; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    /* v3 (64 bytes, this header's): background_model too. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 64), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 64);
    CHECK(((recon_load_params *)buf)->background_model == NULL);
    untouched = 1;
    for (size_t i = 64; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    /* A size between two versions gets the older one (never half a field). */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 52), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 40);
    CHECK(buf[40] == 0xAB);
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 60), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 56);
    CHECK(buf[56] == 0xAB);

    CHECK_STATUS(recon_load_params_init_sized(NULL, sizeof(recon_load_params)),
                 RECON_ERR_INVALID_ARGUMENT);
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_load_params_init_sized((recon_load_params *)buf, 39),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf[0] == 0xAB); /* nothing written */
}

/* The same for recon_run_params: v1 is 56 bytes, v2 (remove_background, guidance) 64, v3
 * (estimate_cameras) 72. */
static void test_run_params_versions(void) {
    unsigned char buf[sizeof(recon_run_params) + 16];
    recon_run_params *p = (recon_run_params *)buf;
    uint32_t size;
    int untouched;

    /* The plain symbol (what a program built against v1 calls) writes v1 only. */
    memset(buf, 0xAB, sizeof buf);
    (recon_run_params_init)(p);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 56);
    CHECK(p->seed == 42 && p->preprocess == 1 && p->progress_user_data == NULL);
    untouched = 1;
    for (size_t i = 56; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 56), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 56);
    untouched = 1;
    for (size_t i = 56; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    /* v2: background removal on (AUTO) and the pipeline's own guidance. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 64), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 64);
    CHECK(p->remove_background == RECON_BACKGROUND_AUTO);
    CHECK(p->guidance == RECON_GUIDANCE_DEFAULT);
    CHECK(p->seed == 42 && p->formats == (RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH));
    untouched = 1;
    for (size_t i = 64; i < sizeof buf; i++) untouched &= buf[i] == 0xAB;
    CHECK(untouched);

    /* v3: cameras estimated (TRELLIS-VGGT). Between v2 and v3: v2. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 72), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 72);
    CHECK(p->estimate_cameras == 1 && p->guidance == RECON_GUIDANCE_DEFAULT);
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 68), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 64);
    CHECK(buf[64] == 0xAB);

    /* A newer caller's larger struct: clamped to this library's struct, the rest untouched. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, sizeof buf), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == sizeof(recon_run_params));
    CHECK(buf[sizeof(recon_run_params)] == 0xAB);

    /* Between v1 and v2: v1 (never half of the v2 fields). */
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 60), RECON_OK);
    memcpy(&size, buf, sizeof size);
    CHECK(size == 56);
    CHECK(buf[56] == 0xAB);

    CHECK_STATUS(recon_run_params_init_sized(NULL, sizeof(recon_run_params)),
                 RECON_ERR_INVALID_ARGUMENT);
    memset(buf, 0xAB, sizeof buf);
    CHECK_STATUS(recon_run_params_init_sized(p, 55), RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf[0] == 0xAB); /* nothing written */
}

/* The *_init functions write sizeof(struct) and the documented defaults; NULL is ignored. */
static void test_init(void) {
    recon_load_params lp;
    memset(&lp, 0xAB, sizeof lp);
    recon_load_params_init(&lp);
    CHECK(lp.struct_size == sizeof lp);
    CHECK(lp.device == RECON_DEVICE_AUTO);
    CHECK(lp.model == NULL);
    CHECK(lp.offline == RECON_OFFLINE_FROM_ENV);
    CHECK(lp.log_level == RECON_LOG_INFO);
    CHECK(lp.log_callback == NULL && lp.log_user_data == NULL);
    CHECK(lp.low_vram == 0 && lp.vggt_model == NULL);
    CHECK(lp.background_model == NULL);

    recon_run_params rp;
    memset(&rp, 0xAB, sizeof rp);
    recon_run_params_init(&rp);
    CHECK(rp.struct_size == sizeof rp);
    CHECK(rp.seed == 42);
    CHECK(rp.sparse_structure_steps == 0 && rp.slat_steps == 0);
    CHECK(rp.sparse_structure_cfg_strength == (float)RECON_DEFAULT_CFG_STRENGTH);
    CHECK(rp.slat_cfg_strength == (float)RECON_DEFAULT_CFG_STRENGTH);
    CHECK(rp.formats == (RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH));
    CHECK(rp.multi_image_mode == RECON_MULTI_IMAGE_STOCHASTIC);
    CHECK(rp.preprocess == 1);
    CHECK(rp.progress_callback == NULL && rp.progress_user_data == NULL);
    CHECK(rp.remove_background == RECON_BACKGROUND_AUTO);
    CHECK(rp.guidance == RECON_GUIDANCE_DEFAULT);
    CHECK(rp.estimate_cameras == 1);

    recon_image im;
    memset(&im, 0xAB, sizeof im);
    recon_image_init(&im);
    CHECK(im.struct_size == sizeof im);
    CHECK(im.format == RECON_IMAGE_ENCODED);
    CHECK(im.data == NULL && im.size == 0);
    CHECK(im.width == 0 && im.height == 0 && im.stride == 0);

    recon_turntable_params tp;
    memset(&tp, 0xAB, sizeof tp);
    recon_turntable_params_init(&tp);
    CHECK(tp.struct_size == sizeof tp);
    CHECK(tp.content == RECON_TURNTABLE_GAUSSIANS);
    CHECK(tp.frames == 120 && tp.resolution == 512);
    CHECK(tp.radius == 2.0f && tp.fov_degrees == 40.0f);
    CHECK(tp.background[0] == 0.0f && tp.background[1] == 0.0f && tp.background[2] == 0.0f);
    CHECK(tp.device == RECON_DEVICE_AUTO);
    CHECK(tp.fps == 30 && tp.mesh_ssaa == 4);
    /* The plain symbol writes the v1 struct (all of it, today); the sized one refuses less. */
    unsigned char tbuf[sizeof(recon_turntable_params) + 8];
    memset(tbuf, 0xAB, sizeof tbuf);
    (recon_turntable_params_init)((recon_turntable_params *)tbuf);
    uint32_t tsize;
    memcpy(&tsize, tbuf, sizeof tsize);
    CHECK(tsize == 48 && tbuf[48] == 0xAB);
    memset(tbuf, 0xAB, sizeof tbuf);
    CHECK_STATUS(recon_turntable_params_init_sized((recon_turntable_params *)tbuf, 40),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(tbuf[0] == 0xAB); /* nothing written */
    CHECK_STATUS(recon_turntable_params_init_sized(NULL, 48), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_turntable_params_init_sized((recon_turntable_params *)tbuf, sizeof tbuf),
                 RECON_OK);
    memcpy(&tsize, tbuf, sizeof tsize);
    CHECK(tsize == 48 && tbuf[48] == 0xAB); /* a larger (newer) struct: this library's part */
    CHECK(recon_mp4_supported() == 0 || recon_mp4_supported() == 1);

    recon_textured_export_params xp;
    memset(&xp, 0xAB, sizeof xp);
    recon_textured_export_params_init(&xp);
    CHECK(xp.struct_size == sizeof xp && xp.seed == 0 && xp.jpeg_quality == 90);
    CHECK(xp.fill_holes == 1 && xp.fill_holes_views == 1000 && xp.vertex_colors_only == 0);
    unsigned char xbuf[sizeof(recon_textured_export_params) + 8];
    memset(xbuf, 0xAB, sizeof xbuf);
    (recon_textured_export_params_init)((recon_textured_export_params *)xbuf);
    memcpy(&tsize, xbuf, sizeof tsize);
    CHECK(tsize == 72 && xbuf[72] == 0xAB);
    memset(xbuf, 0xAB, sizeof xbuf);
    CHECK_STATUS(recon_textured_export_params_init_sized((recon_textured_export_params *)xbuf, 64),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(xbuf[0] == 0xAB);
    CHECK_STATUS(recon_textured_export_params_init_sized(NULL, 72), RECON_ERR_INVALID_ARGUMENT);
    (recon_textured_export_params_init)(NULL);

    test_load_params_versions();
    test_run_params_versions();

    recon_load_params_init(NULL);
    recon_run_params_init(NULL);
    recon_image_init(NULL);
    (recon_turntable_params_init)(NULL);
    CHECK(1); /* survived the NULLs */
}

/* ---------------------------------------------------------------------------------------------
 * Turntables: what the frame callback saw.
 */

typedef struct {
    uint32_t frames;     /* callbacks received */
    uint32_t stop_after; /* return 0 at this many frames (0: never) */
    uint32_t count, width, height;
    uint32_t bad;        /* a frame out of order, of the wrong size or without pixels */
    uint64_t covered;    /* pixels with alpha > 0, over all frames */
    uint64_t checksum;   /* of frame 0's pixels, to compare two renders */
} frame_capture;

static int32_t on_frame_count(const recon_frame *frame, void *user_data) {
    frame_capture *cap = user_data;
    if (!cap) return 1;
    if (!frame || frame->struct_size < sizeof(recon_frame) || frame->index != cap->frames ||
        !frame->rgba || frame->width == 0 || frame->height == 0)
        cap->bad++;
    if (frame && frame->rgba) {
        cap->count = frame->count;
        cap->width = frame->width;
        cap->height = frame->height;
        size_t n = (size_t)frame->width * frame->height;
        uint64_t sum = 1469598103934665603ull;
        for (size_t i = 0; i < n; i++) {
            if (frame->rgba[4 * i + 3] > 0) cap->covered++;
            for (int c = 0; c < 4; c++) sum = (sum ^ frame->rgba[4 * i + c]) * 1099511628211ull;
        }
        if (frame->index == 0) cap->checksum = sum;
    }
    cap->frames++;
    return cap->stop_after == 0 || cap->frames < cap->stop_after;
}

/* Every free and every model/result/buffer accessor accepts NULL. */
static void test_null_handles(void) {
    recon_free(NULL);
    recon_result_free(NULL);
    recon_buffer_free(NULL);
    recon_cancel(NULL);
    CHECK(strcmp(recon_model_last_error(NULL), "") == 0);
    CHECK(strcmp(recon_model_pipeline_name(NULL), "") == 0);
    CHECK(recon_model_device(NULL) == RECON_DEVICE_CPU);
    CHECK(recon_model_num_networks(NULL) == 0);
    recon_network_info info = {.struct_size = sizeof info};
    CHECK_STATUS(recon_model_network(NULL, 0, &info), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_model_network(NULL, 0, NULL), RECON_ERR_INVALID_ARGUMENT);

    /* Result accessors with a NULL result (test_generate checks them on a real one). */
    char path[512];
    path_join(path, sizeof path, g_tmp, "never.glb");
    CHECK(strcmp(recon_result_last_error(NULL), "") == 0);
    recon_gaussians g = {.struct_size = sizeof g};
    CHECK_STATUS(recon_result_gaussians(NULL, &g), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_gaussians(NULL, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(g.count == 0 && g.xyz == NULL); /* untouched */
    recon_mesh m = {.struct_size = sizeof m};
    CHECK_STATUS(recon_result_mesh(NULL, &m), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_mesh(NULL, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(recon_result_num_cameras(NULL) == 0);
    recon_camera c = {.struct_size = sizeof c};
    CHECK_STATUS(recon_result_camera(NULL, 0, &c), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_camera(NULL, 0, NULL), RECON_ERR_INVALID_ARGUMENT);
    float extrinsic[16] = {0}, intrinsic[9] = {0};
    CHECK_STATUS(recon_result_camera_matrices(NULL, 0, extrinsic, intrinsic),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_camera_matrices(NULL, 0, NULL, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(extrinsic[15] == 0.0f && intrinsic[8] == 0.0f); /* untouched */
    CHECK_STATUS(recon_result_export(NULL, RECON_EXPORT_GLB, path), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_export(NULL, RECON_EXPORT_OBJ, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(access(path, F_OK) != 0); /* nothing written */
    recon_buffer *buf = (recon_buffer *)&g_tmp;
    CHECK_STATUS(recon_result_export_buffer(NULL, RECON_EXPORT_GLB, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp);
    CHECK_STATUS(recon_result_export_buffer(NULL, RECON_EXPORT_PLY_GAUSSIANS, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(recon_buffer_data(NULL) == NULL);
    CHECK(recon_buffer_size(NULL) == 0);
    char frames_dir[512];
    path_join(frames_dir, sizeof frames_dir, g_tmp, "never_frames");
    CHECK_STATUS(recon_result_render_turntable(NULL, NULL, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_write_turntable(NULL, NULL, frames_dir, NULL, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(access(frames_dir, F_OK) != 0); /* nothing written */
    CHECK_STATUS(recon_result_export_textured(NULL, RECON_EXPORT_GLB, NULL, path),
                 RECON_ERR_INVALID_ARGUMENT);
    buf = (recon_buffer *)&g_tmp;
    CHECK_STATUS(recon_result_export_textured_buffer(NULL, RECON_EXPORT_GLB, NULL, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp);
}

/* ---------------------------------------------------------------------------------------------
 * A tiny BiRefNet for background removal, written from tests/fixtures/birefnet_tiny (its
 * README.md: the published model is 885 MB, the smallest recon builds still 43 MB, so the
 * fixture is a recipe: the layout, and seeded uniform values of the golden init's mean and std).
 */

/* splitmix64: the fixture's value stream. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    char name[128];
    int64_t shape[8];
    int ndim;
    size_t numel;
    double mean, std;
} tensor_rule;

/* Appends printf-style text to a growing buffer; 0 when memory runs out. */
static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return 0;
        if (*buf && *len + (size_t)n < *cap) {
            *len += (size_t)n;
            return 1;
        }
        size_t want = (*cap ? *cap * 2 : 4096) + (size_t)n;
        char *grown = realloc(*buf, want);
        if (!grown) return 0;
        *buf = grown;
        *cap = want;
    }
}

/* Parses layout.tsv (`name<TAB>d0,d1,..<TAB>mean<TAB>std`, '#' comments) into `rules`. */
static size_t parse_layout(char *text, tensor_rule *rules, size_t max) {
    size_t n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || line[0] == '\0') continue;
        if (n == max) return 0;
        tensor_rule *r = &rules[n];
        char *tab1 = strchr(line, '\t');
        char *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        char *tab3 = tab2 ? strchr(tab2 + 1, '\t') : NULL;
        if (!tab3 || (size_t)(tab1 - line) >= sizeof r->name) return 0;
        memcpy(r->name, line, (size_t)(tab1 - line));
        r->name[tab1 - line] = '\0';
        r->ndim = 0;
        r->numel = 1;
        for (char *d = tab1 + 1; d < tab2 && r->ndim < 8;) {
            char *end;
            long long v = strtoll(d, &end, 10);
            if (end == d || v <= 0) return 0;
            r->shape[r->ndim++] = v;
            r->numel *= (size_t)v;
            d = *end == ',' ? end + 1 : end;
            if (d != tab2 && end[0] != ',') return 0;
        }
        r->mean = strtod(tab2 + 1, NULL);
        r->std = strtod(tab3 + 1, NULL);
        n++;
    }
    return n;
}

/* Writes the tiny BiRefNet folder (model.safetensors + recon_config.json) into `out_dir` from
 * the fixture `recipe_dir`; 1 on success. */
static int write_tiny_birefnet(const char *recipe_dir, const char *out_dir) {
    static tensor_rule rules[1024];
    char path[512];
    size_t size = 0;
    path_join(path, sizeof path, recipe_dir, "layout.tsv");
    char *layout = (char *)read_all(path, &size);
    if (!layout) return 0;
    layout[size] = '\0';
    size_t count = parse_layout(layout, rules, sizeof rules / sizeof rules[0]);
    free(layout);
    if (count == 0) return 0;

    /* The safetensors header: every tensor in file order, padded with spaces to 8 bytes. */
    char *header = NULL;
    size_t len = 0, cap = 0, offset = 0;
    int ok = appendf(&header, &len, &cap, "{");
    for (size_t i = 0; ok && i < count; i++) {
        ok = appendf(&header, &len, &cap, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", i ? "," : "",
                     rules[i].name);
        for (int d = 0; ok && d < rules[i].ndim; d++)
            ok = appendf(&header, &len, &cap, "%s%lld", d ? "," : "",
                         (long long)rules[i].shape[d]);
        size_t bytes = rules[i].numel * sizeof(float);
        ok = ok && appendf(&header, &len, &cap, "],\"data_offsets\":[%zu,%zu]}", offset,
                           offset + bytes);
        offset += bytes;
    }
    ok = ok && appendf(&header, &len, &cap, "}");
    while (ok && len % 8 != 0) ok = appendf(&header, &len, &cap, " ");
    mkdir(out_dir, 0700);
    path_join(path, sizeof path, out_dir, "model.safetensors");
    FILE *f = ok ? fopen(path, "wb") : NULL;
    if (f) {
        unsigned char le[8];
        for (int b = 0; b < 8; b++) le[b] = (unsigned char)((uint64_t)len >> (8 * b));
        ok = fwrite(le, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len;
        uint64_t state = 1;
        const double root3 = sqrt(3.0);
        float chunk[4096];
        for (size_t i = 0; ok && i < count; i++) {
            for (size_t done = 0; ok && done < rules[i].numel;) {
                size_t n = rules[i].numel - done;
                if (n > sizeof chunk / sizeof chunk[0]) n = sizeof chunk / sizeof chunk[0];
                for (size_t k = 0; k < n; k++) {
                    double u = (double)(splitmix64(&state) >> 40) / 16777216.0 * 2.0 - 1.0;
                    chunk[k] = (float)(rules[i].std * u * root3 + rules[i].mean);
                }
                ok = fwrite(chunk, sizeof(float), n, f) == n; /* little-endian hosts */
                done += n;
            }
        }
        ok = (fclose(f) == 0) && ok;
    } else {
        ok = 0;
    }
    free(header);
    if (!ok) return 0;
    path_join(path, sizeof path, recipe_dir, "recon_config.json");
    unsigned char *config = read_all(path, &size);
    if (!config) return 0;
    path_join(path, sizeof path, out_dir, "recon_config.json");
    ok = write_all(path, config, size);
    free(config);
    return ok;
}

/* ---------------------------------------------------------------------------------------------
 * recon_load: arguments, error buffer, files, Hub, device.
 */

static void test_load_arguments(void) {
    recon_model *model = (recon_model *)&g_tmp;
    char err[512];
    recon_load_params lp;

    /* NULL pointers. */
    recon_load_params_init(&lp);
    lp.model = g_model;
    err[0] = '\0';
    CHECK_STATUS(recon_load(NULL, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "recon_load_params"), err);
    CHECK_STATUS(recon_load(&lp, NULL, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "out_model"), err);
    CHECK_STATUS(recon_load(NULL, NULL, NULL, 0), RECON_ERR_INVALID_ARGUMENT);
    lp.model = NULL;
    CHECK_STATUS(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "model"), err);

    /* Bad values. */
    struct {
        const char *what;
        int32_t device, offline, log_level;
        const char *model;
    } bad[] = {
        {"device -3", -3, 1, RECON_LOG_INFO, g_model},
        {"offline 2", RECON_DEVICE_CPU, 2, RECON_LOG_INFO, g_model},
        {"log_level 5", RECON_DEVICE_CPU, 1, 5, g_model},
        {"log_level -1", RECON_DEVICE_CPU, 1, -1, g_model},
        {"empty model", RECON_DEVICE_CPU, 1, RECON_LOG_INFO, ""},
        {"model is a file", RECON_DEVICE_CPU, 1, RECON_LOG_INFO, "/dev/null"},
        {"neither dir nor repo id", RECON_DEVICE_CPU, 1, RECON_LOG_INFO, "no_such_thing"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        recon_load_params_init(&lp);
        lp.device = bad[i].device;
        lp.offline = bad[i].offline;
        lp.log_level = bad[i].log_level;
        lp.model = bad[i].model;
        err[0] = '\0';
        check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT,
                          bad[i].what, err, __LINE__);
        CHECK_MSG(err[0] != '\0', bad[i].what);
    }

    /* v2 fields: low_vram must be 0 or 1, vggt_model UTF-8. */
    recon_load_params_init(&lp);
    lp.model = g_model;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    lp.low_vram = 2;
    err[0] = '\0';
    CHECK_STATUS(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "low_vram"), err);
    lp.low_vram = 0;
    lp.vggt_model = "\xff\xfe";
    CHECK_STATUS(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "vggt_model"), err);
    /* v3: background_model NULL (the Hub's BiRefNet) or a non-empty UTF-8 string. */
    lp.vggt_model = NULL;
    lp.background_model = "\xff\xfe";
    CHECK_STATUS(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "background_model"), err);
    lp.background_model = "";
    CHECK_STATUS(recon_load(&lp, &model, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(contains(err, "background_model"), err);

    /* Low-VRAM mode loads (every network checked now, built per stage later) and lists its
     * networks as runnable. */
    recon_load_params_init(&lp);
    lp.model = g_model;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    lp.low_vram = 1;
    recon_model *lean = NULL;
    CHECK_STATUS(recon_load(&lp, &lean, err, sizeof err), RECON_OK);
    if (lean) {
        recon_network_info info = {.struct_size = sizeof info};
        CHECK_STATUS(recon_model_network(lean, 0, &info), RECON_OK);
        CHECK(info.implemented == 1);
        recon_free(lean);
    }

    /* struct_size: zero, too small, too large (the struct sits in a larger buffer). */
    struct {
        recon_load_params p;
        unsigned char tail[64];
    } big;
    /* (below v1's 40 bytes, between two versions, or above this header's struct) */
    const uint32_t sizes[] = {0, 4, 32, 44, 52, 60, (uint32_t)sizeof(recon_load_params) + 8,
                              UINT32_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memset(&big, 0, sizeof big);
        recon_load_params_init(&big.p);
        big.p.model = g_model;
        big.p.device = RECON_DEVICE_CPU;
        /* A real pointer: a size inside it (52) once copied half of it and crashed (found by
         * the fuzzer). */
        big.p.vggt_model = "vggt";
        big.p.background_model = "birefnet";
        big.p.struct_size = sizes[i];
        err[0] = '\0';
        check_status_impl(recon_load(&big.p, &model, err, sizeof err),
                          RECON_ERR_INVALID_ARGUMENT, "recon_load struct_size", err, __LINE__);
        CHECK_MSG(contains(err, "struct_size"), err);
    }
    CHECK(model == (recon_model *)&g_tmp); /* never written on failure */
}

/* The error buffer is truncated, NUL-terminated, and may be NULL or zero-length. */
static void test_error_buffer(void) {
    const char *full = "recon_load_params is NULL";
    char err[64];

    memset(err, 'X', sizeof err);
    CHECK_STATUS(recon_load(NULL, NULL, err, sizeof err), RECON_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strcmp(err, full) == 0 || strstr(err, "NULL") != NULL, err);

    memset(err, 'X', sizeof err);
    CHECK_STATUS(recon_load(NULL, NULL, err, 8), RECON_ERR_INVALID_ARGUMENT);
    CHECK(err[7] == '\0' && strlen(err) == 7);
    CHECK(err[8] == 'X'); /* nothing past error_buf_len */

    memset(err, 'X', sizeof err);
    CHECK_STATUS(recon_load(NULL, NULL, err, 1), RECON_ERR_INVALID_ARGUMENT);
    CHECK(err[0] == '\0' && err[1] == 'X');

    memset(err, 'X', sizeof err);
    CHECK_STATUS(recon_load(NULL, NULL, err, 0), RECON_ERR_INVALID_ARGUMENT);
    CHECK(err[0] == 'X'); /* len 0: untouched */

    CHECK_STATUS(recon_load(NULL, NULL, NULL, 100), RECON_ERR_INVALID_ARGUMENT);
}

static void test_load_files(void) {
    char missing[512];
    path_join(missing, sizeof missing, g_tmp, "no_such_model_dir");
    expect_load_failure("missing model directory", missing, RECON_ERR_IO, "no_such_model_dir");

    /* An existing directory without pipeline.json. */
    char empty[512];
    path_join(empty, sizeof empty, g_tmp, "empty_dir");
    CHECK(mkdir(empty, 0700) == 0);
    expect_load_failure("directory without pipeline.json", empty, RECON_ERR_IO, "pipeline.json");

    breakage b;
    memset(&b, 0, sizeof b);
    b.pipeline_json = "{ \"name\": \"TrellisImageTo3DPipeline\", \"args\": ";
    expect_load_failure("malformed pipeline.json", broken_model("bad_pipeline_json", b),
                        RECON_ERR_FORMAT, "pipeline.json");

    memset(&b, 0, sizeof b);
    b.skip_config = 1;
    expect_load_failure("missing checkpoint json", broken_model("no_ckpt_json", b), RECON_ERR_IO,
                        "ss_dec_conv3d_tiny_fp16.json");

    memset(&b, 0, sizeof b);
    b.truncate_to = 100; /* inside the JSON header */
    expect_load_failure("safetensors truncated in its header", broken_model("trunc_header", b),
                        RECON_ERR_FORMAT, "safetensors");

    memset(&b, 0, sizeof b);
    b.truncate_to = 10000; /* inside the data */
    expect_load_failure("safetensors truncated in its data", broken_model("trunc_data", b),
                        RECON_ERR_FORMAT, "safetensors");

    memset(&b, 0, sizeof b);
    b.truncate_to = 5; /* not even the length prefix */
    expect_load_failure("safetensors of 5 bytes", broken_model("trunc_5", b), RECON_ERR_FORMAT,
                        "safetensors");

    memset(&b, 0, sizeof b);
    b.garbage_header = 1;
    expect_load_failure("safetensors with a garbage header", broken_model("garbage_header", b),
                        RECON_ERR_FORMAT, "safetensors");

    /* A tensor the network needs is renamed (header length unchanged). */
    memset(&b, 0, sizeof b);
    b.from = "\"input_layer.bias\"";
    b.to = "\"input_layer.biaz\"";
    expect_load_failure("missing tensor", broken_model("missing_tensor", b), RECON_ERR_CHECKPOINT,
                        "input_layer.bias");

    /* A tensor with the right size but the wrong shape ([12,8,3,3,3] -> [8,12,3,3,3]). */
    memset(&b, 0, sizeof b);
    b.from = "\"input_layer.weight\":{\"dtype\":\"F32\",\"shape\":[12,8,";
    b.to = "\"input_layer.weight\":{\"dtype\":\"F32\",\"shape\":[8,12,";
    expect_load_failure("mis-shaped tensor", broken_model("misshaped_tensor", b),
                        RECON_ERR_CHECKPOINT, "input_layer.weight");

    /* The unmodified copy loads: the breakage, not the copying, caused the failures above. */
    memset(&b, 0, sizeof b);
    const char *copy = broken_model("intact_copy", b);
    recon_model *model = NULL;
    char err[1024] = "";
    CHECK_MSG(copy != NULL, "copying the tiny model");
    if (copy) {
        check_status_impl(load_cpu(copy, &model, err, sizeof err), RECON_OK, "load intact copy",
                          err, __LINE__);
        recon_free(model);
    }
}

/* Offline with an empty cache: RECON_ERR_NETWORK naming the repo. */
static void test_offline_hub(void) {
    char home[512];
    path_join(home, sizeof home, g_tmp, "hf_home");
    CHECK(mkdir(home, 0700) == 0);
    const char *old_home = getenv("HF_HOME");
    const char *old_cache = getenv("HF_HUB_CACHE");
    char *saved_home = old_home ? strdup(old_home) : NULL;
    char *saved_cache = old_cache ? strdup(old_cache) : NULL;
    setenv("HF_HOME", home, 1);
    unsetenv("HF_HUB_CACHE");

    expect_load_failure("offline Hub, not cached", "someone/missing-repo", RECON_ERR_NETWORK,
                        "someone/missing-repo");

    /* offline = RECON_OFFLINE_FROM_ENV with HF_HUB_OFFLINE=1 behaves the same. */
    const char *old_offline = getenv("HF_HUB_OFFLINE");
    char *saved_offline = old_offline ? strdup(old_offline) : NULL;
    setenv("HF_HUB_OFFLINE", "1", 1);
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = "someone/missing-repo@v1.0";
    lp.device = RECON_DEVICE_CPU;
    recon_model *model = NULL;
    char err[1024] = "";
    check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_ERR_NETWORK,
                      "HF_HUB_OFFLINE=1", err, __LINE__);
    CHECK_MSG(contains(err, "someone/missing-repo"), err);
    CHECK(model == NULL);

    if (saved_offline) setenv("HF_HUB_OFFLINE", saved_offline, 1); else unsetenv("HF_HUB_OFFLINE");
    if (saved_home) setenv("HF_HOME", saved_home, 1); else unsetenv("HF_HOME");
    if (saved_cache) setenv("HF_HUB_CACHE", saved_cache, 1);
    free(saved_offline);
    free(saved_home);
    free(saved_cache);
}

static void test_devices(void) {
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = g_model;
    lp.offline = 1;
    lp.device = 99; /* more than any machine has */
    recon_model *model = NULL;
    char err[512] = "";
    check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_ERR_DEVICE, "device 99",
                      err, __LINE__);
    CHECK_MSG(contains(err, "99"), err);
    CHECK(model == NULL);

    /* RECON_DEVICE_AUTO picks CUDA 0 when there is a GPU, else the CPU. */
    int gpus = recon_cuda_device_count();
    lp.device = RECON_DEVICE_AUTO;
    check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_OK, "device AUTO", err,
                      __LINE__);
    CHECK(recon_model_device(model) == (gpus > 0 ? 0 : RECON_DEVICE_CPU));
    recon_free(model);
    model = NULL;
    if (gpus > 0) {
        lp.device = gpus - 1;
        check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_OK, "last CUDA device",
                          err, __LINE__);
        CHECK(recon_model_device(model) == gpus - 1);
        recon_free(model);
    }
}

/* ---------------------------------------------------------------------------------------------
 * A loaded model: log callback, introspection, recon_run's validation, cancel, threads.
 */

typedef struct {
    int count;
    int bad_level;
    int max_level_seen;
    char first[256];
} log_capture;

static void on_log(int32_t level, const char *message, void *user_data) {
    log_capture *cap = user_data;
    if (level < RECON_LOG_ERROR || level > RECON_LOG_DEBUG || message == NULL) cap->bad_level++;
    if (level > cap->max_level_seen) cap->max_level_seen = level;
    if (cap->count++ == 0 && message) snprintf(cap->first, sizeof cap->first, "%s", message);
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* One progress report, with the time it arrived. */
typedef struct {
    int32_t stage;
    uint32_t step, total;
    double at;
} report;

typedef struct {
    int calls;
    int bad;           /* reports that broke the contract */
    int32_t last_stage;
    uint32_t last_step;
    uint32_t last_total;
    int32_t answer;    /* what the callback returns */
    /* When stop_stage > 0: return 0 (cancel) at the first report at or past (stop_stage,
     * stop_step), and set `stopped`. */
    int32_t stop_stage;
    uint32_t stop_step;
    int stopped;
    size_t num_reports; /* all of them; the first 64 are kept */
    report reports[64];
} progress_capture;

static int32_t on_progress(const recon_progress *p, void *user_data) {
    progress_capture *cap = user_data;
    cap->calls++;
    if (!p || p->struct_size != sizeof(recon_progress) || p->stage < RECON_STAGE_PREPROCESS ||
        p->stage > RECON_STAGE_EXPORT || p->step > p->total)
        cap->bad++;
    if (!p) return cap->answer;
    cap->last_stage = p->stage;
    cap->last_step = p->step;
    cap->last_total = p->total;
    if (cap->num_reports < sizeof cap->reports / sizeof cap->reports[0])
        cap->reports[cap->num_reports] = (report){p->stage, p->step, p->total, now_seconds()};
    cap->num_reports++;
    if (cap->stop_stage > 0 && (p->stage > cap->stop_stage ||
                                (p->stage == cap->stop_stage && p->step >= cap->stop_step))) {
        cap->stopped = 1;
        return 0;
    }
    return cap->answer;
}

static recon_model *load_tiny(log_capture *cap, int32_t log_level) {
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = g_model;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    lp.log_level = log_level;
    lp.log_callback = on_log;
    lp.log_user_data = cap;
    recon_model *model = NULL;
    char err[1024] = "";
    check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_OK, "load the tiny model",
                      err, __LINE__);
    CHECK(model != NULL);
    return model;
}

static void test_logging(void) {
    log_capture cap;
    memset(&cap, 0, sizeof cap);
    recon_model *model = load_tiny(&cap, RECON_LOG_DEBUG);
    CHECK_MSG(cap.count > 0, "no log message during recon_load");
    CHECK(cap.bad_level == 0);
    CHECK(cap.max_level_seen <= RECON_LOG_DEBUG);
    printf("first log message: %s\n", cap.first);
    recon_free(model);

    /* Only errors: a successful load reports none. */
    memset(&cap, 0, sizeof cap);
    model = load_tiny(&cap, RECON_LOG_ERROR);
    CHECK(cap.count == 0);
    recon_free(model);
}

static void test_model_introspection(recon_model *model) {
    CHECK(strcmp(recon_model_last_error(model), "") == 0); /* nothing failed yet */
    CHECK(strcmp(recon_model_pipeline_name(model), "TrellisImageTo3DPipeline") == 0);
    CHECK(recon_model_device(model) == RECON_DEVICE_CPU);
    CHECK(recon_model_num_networks(model) == TINY_NUM_NETWORKS);

    recon_network_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_STATUS_M(model, recon_model_network(model, 0, &info), RECON_OK);
    CHECK(info.struct_size == sizeof info); /* kept */
    /* Every network, in order; all of them are implemented. */
    for (size_t i = 0; i < TINY_NUM_NETWORKS && i < recon_model_num_networks(model); i++) {
        recon_network_info n;
        memset(&n, 0, sizeof n);
        n.struct_size = sizeof n;
        CHECK_STATUS_M(model, recon_model_network(model, i, &n), RECON_OK);
        CHECK_MSG(n.key && strcmp(n.key, k_tiny_networks[i].key) == 0, k_tiny_networks[i].key);
        CHECK_MSG(n.class_name && strcmp(n.class_name, k_tiny_networks[i].class_name) == 0,
                  k_tiny_networks[i].class_name);
        CHECK_MSG(n.stem && strcmp(n.stem, k_tiny_networks[i].stem) == 0, k_tiny_networks[i].stem);
        CHECK_MSG(n.implemented == 1, k_tiny_networks[i].key);
        CHECK_MSG(n.num_elements > 0, k_tiny_networks[i].key);
        printf("network %zu: %s (%s) %s, %llu elements, implemented %d\n", i,
               n.key ? n.key : "?", n.class_name ? n.class_name : "?", n.stem ? n.stem : "?",
               (unsigned long long)n.num_elements, (int)n.implemented);
    }
    /* The strings are owned by the model: a second call returns the same pointers. */
    recon_network_info again = {.struct_size = sizeof again};
    CHECK_STATUS_M(model, recon_model_network(model, 0, &again), RECON_OK);
    CHECK(again.key == info.key && again.class_name == info.class_name);

    /* Out of range, NULL out, bad struct_size: INVALID_ARGUMENT and a message. */
    recon_network_info bad = {.struct_size = sizeof bad};
    CHECK_STATUS(recon_model_network(model, TINY_NUM_NETWORKS, &bad), RECON_ERR_INVALID_ARGUMENT);
    CHECK(bad.key == NULL); /* untouched */
    CHECK(contains(recon_model_last_error(model), "out of range"));
    CHECK_STATUS(recon_model_network(model, SIZE_MAX, &bad), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_model_network(model, 0, NULL), RECON_ERR_INVALID_ARGUMENT);
    struct {
        recon_network_info info;
        unsigned char tail[64];
    } big;
    const uint32_t sizes[] = {0, 4, (uint32_t)sizeof(recon_network_info) - 8,
                              (uint32_t)sizeof(recon_network_info) + 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memset(&big, 0, sizeof big);
        big.info.struct_size = sizes[i];
        CHECK_STATUS(recon_model_network(model, 0, &big.info), RECON_ERR_INVALID_ARGUMENT);
        CHECK(big.info.key == NULL && big.info.num_elements == 0);
        CHECK(contains(recon_model_last_error(model), "struct_size"));
    }
}

/* recon_run with `n` copies of `view` and `params`; the result sentinel must stay untouched. */
static recon_status run_views(recon_model *model, const recon_image *views, size_t n,
                              const recon_run_params *params) {
    static char sentinel;
    recon_result *result = (recon_result *)&sentinel;
    recon_status st = recon_run(model, views, n, params, &result);
    if (st != RECON_OK) {
        CHECK(result == (recon_result *)&sentinel);
    } else {
        recon_result_free(result);
    }
    return st;
}

static recon_image png_view(void) {
    recon_image v;
    recon_image_init(&v);
    v.format = RECON_IMAGE_ENCODED;
    v.data = k_png;
    v.size = sizeof k_png;
    return v;
}

static recon_image photo_view(void) {
    recon_image v;
    recon_image_init(&v);
    v.format = RECON_IMAGE_RGB8;
    v.data = g_photo;
    v.size = sizeof g_photo;
    v.width = PHOTO_W;
    v.height = PHOTO_H;
    return v;
}

static recon_image cutout_view(void) {
    recon_image v;
    recon_image_init(&v);
    v.format = RECON_IMAGE_RGBA8;
    v.data = g_cutout;
    v.size = sizeof g_cutout;
    v.width = v.height = CUTOUT_SIDE;
    return v;
}

static void test_run_validation(recon_model *model) {
    recon_image png = png_view();
    recon_run_params rp;
    recon_run_params_init(&rp);
    static char sentinel;
    recon_result *result = (recon_result *)&sentinel;

    /* NULL pointers and counts. */
    CHECK_STATUS(recon_run(NULL, &png, 1, &rp, &result), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_run(model, &png, 1, &rp, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "out_result"));
    CHECK_STATUS(run_views(model, &png, 0, &rp), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "num_images"));
    CHECK_STATUS(run_views(model, NULL, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "images"));
    CHECK_STATUS(run_views(model, NULL, 0, NULL), RECON_ERR_INVALID_ARGUMENT);
    recon_image many[65];
    for (size_t i = 0; i < 65; i++) many[i] = png;
    CHECK_STATUS(run_views(model, many, 65, &rp), RECON_ERR_INVALID_ARGUMENT);
    CHECK(result == (recon_result *)&sentinel);

    /* Encoded images. */
    static const unsigned char garbage[] = "this is not an image at all";
    recon_image v = png;
    v.data = garbage;
    v.size = sizeof garbage;
    CHECK_STATUS_M(model, run_views(model, &v, 1, &rp), RECON_ERR_FORMAT);
    v = png;
    v.size = 20; /* a PNG cut inside its IHDR chunk */
    CHECK_STATUS_M(model, run_views(model, &v, 1, &rp), RECON_ERR_FORMAT);
    v = png;
    v.size = 0;
    CHECK_STATUS(run_views(model, &v, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    v = png;
    v.data = NULL;
    CHECK_STATUS(run_views(model, &v, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "images[0]"));
    v = png;
    v.format = 7;
    CHECK_STATUS(run_views(model, &v, 1, &rp), RECON_ERR_INVALID_ARGUMENT);

    /* A bad second view is reported with its index. */
    recon_image two[2] = {png, png};
    two[1].data = garbage;
    two[1].size = sizeof garbage;
    CHECK_STATUS(run_views(model, two, 2, &rp), RECON_ERR_FORMAT);
    CHECK(contains(recon_model_last_error(model), "1"));

    /* recon_image.struct_size. */
    const uint32_t image_sizes[] = {0, 4, (uint32_t)sizeof(recon_image) - 8,
                                    (uint32_t)sizeof(recon_image) + 8};
    for (size_t i = 0; i < sizeof image_sizes / sizeof image_sizes[0]; i++) {
        recon_image big[2] = {png, png}; /* room behind the struct for a too-large size */
        big[0].struct_size = image_sizes[i];
        CHECK_STATUS(run_views(model, big, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
        CHECK(contains(recon_model_last_error(model), "struct_size"));
    }

    /* Raw pixels: 4x4 RGB is 48 bytes tightly packed. */
    unsigned char pixels[4 * 20];
    memset(pixels, 200, sizeof pixels);
    recon_image raw;
    recon_image_init(&raw);
    raw.format = RECON_IMAGE_RGB8;
    raw.data = pixels;
    raw.size = 47;
    raw.width = 4;
    raw.height = 4;
    CHECK_STATUS(run_views(model, &raw, 1, &rp), RECON_ERR_INVALID_ARGUMENT); /* too short */
    CHECK(contains(recon_model_last_error(model), "48"));
    raw.size = 48;
    raw.stride = 11; /* smaller than a row of 12 bytes */
    CHECK_STATUS(run_views(model, &raw, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "stride"));
    raw.stride = 16; /* padded rows need 3*16+12 = 60 bytes */
    CHECK_STATUS(run_views(model, &raw, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    raw.stride = 0;
    raw.width = 0;
    CHECK_STATUS(run_views(model, &raw, 1, &rp), RECON_ERR_INVALID_ARGUMENT);
    raw.width = 100000; /* over the size limit */
    raw.height = 100000;
    CHECK_STATUS(run_views(model, &raw, 1, &rp), RECON_ERR_INVALID_ARGUMENT);

    /* Parameters. */
    recon_run_params p;
#define BAD_PARAM(stmt, needle)                                                          \
    do {                                                                                 \
        recon_run_params_init(&p);                                                       \
        stmt;                                                                            \
        check_status_impl(run_views(model, &png, 1, &p), RECON_ERR_INVALID_ARGUMENT, #stmt, \
                          recon_model_last_error(model), __LINE__);                     \
        CHECK_MSG(contains(recon_model_last_error(model), needle),                       \
                  recon_model_last_error(model));                                        \
    } while (0)
    BAD_PARAM(p.sparse_structure_cfg_strength = NAN, "cfg_strength");
    BAD_PARAM(p.slat_cfg_strength = NAN, "cfg_strength");
    BAD_PARAM(p.slat_cfg_strength = INFINITY, "cfg_strength");
    BAD_PARAM(p.sparse_structure_cfg_strength = -2.0f, "cfg_strength");
    BAD_PARAM(p.slat_cfg_strength = 101.0f, "cfg_strength");
    BAD_PARAM(p.formats = 8, "formats");
    BAD_PARAM(p.formats = 0xFFFFFFFFu, "formats");
    BAD_PARAM(p.formats = 0, "format");
    BAD_PARAM(p.multi_image_mode = 2, "multi_image_mode");
    BAD_PARAM(p.multi_image_mode = -1, "multi_image_mode");
    BAD_PARAM(p.sparse_structure_steps = 1001, "steps");
    BAD_PARAM(p.slat_steps = UINT32_MAX, "steps");
    BAD_PARAM(p.remove_background = 3, "remove_background is 3");
    BAD_PARAM(p.remove_background = -1, "remove_background is -1");
    BAD_PARAM(p.guidance = 3, "guidance is 3");
    BAD_PARAM(p.guidance = INT32_MIN, "guidance");
    BAD_PARAM(p.struct_size = 0, "struct_size");
    BAD_PARAM(p.struct_size = 4, "struct_size");
    BAD_PARAM(p.struct_size = 48, "struct_size");
    BAD_PARAM(p.struct_size = 60, "struct_size"); /* between v1 (56) and v2 (64) */
    BAD_PARAM(p.struct_size = 68, "struct_size"); /* between v2 (64) and v3 (72) */
#undef BAD_PARAM
    struct {
        recon_run_params p;
        unsigned char tail[64];
    } big;
    memset(&big, 0, sizeof big);
    recon_run_params_init(&big.p);
    big.p.struct_size = sizeof(recon_run_params) + 8;
    CHECK_STATUS(run_views(model, &png, 1, &big.p), RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_model_last_error(model), "struct_size"));
}

/* Runs `views` with a copy of `params` (NULL: the defaults) whose progress callback cancels the
 * run at the first report at or past (stop_stage, stop_step). A run that gets there passed every
 * check of its arguments and did the work up to that point. */
static recon_status run_until(recon_model *model, const recon_image *views, size_t n,
                              const recon_run_params *params, int32_t stop_stage,
                              uint32_t stop_step, progress_capture *cap) {
    recon_run_params rp;
    if (params) {
        rp = *params;
    } else {
        recon_run_params_init(&rp);
    }
    memset(cap, 0, sizeof *cap);
    cap->answer = 1;
    cap->stop_stage = stop_stage;
    cap->stop_step = stop_step;
    rp.progress_callback = on_progress;
    rp.progress_user_data = cap;
    return run_views(model, views, n, &rp);
}

/* Expects the request to be accepted: the run reaches (stop_stage, stop_step), where its own
 * progress callback cancels it (RECON_ERR_CANCELLED, "progress callback" in the message). */
static void check_accepted(recon_model *model, const recon_image *views, size_t n,
                           const recon_run_params *params, int32_t stop_stage, uint32_t stop_step,
                           const char *what, int line) {
    progress_capture cap;
    recon_status st = run_until(model, views, n, params, stop_stage, stop_step, &cap);
    check_status_impl(st, RECON_ERR_CANCELLED, what, recon_model_last_error(model), line);
    check_impl(cap.stopped == 1 && cap.bad == 0, "the run reached its stop point", what, line);
    check_impl(contains(recon_model_last_error(model), "progress callback"),
               "cancelled by the progress callback", recon_model_last_error(model), line);
}

#define CHECK_ACCEPTED(model, views, n, params, stop_stage, stop_step)                         \
    check_accepted((model), (views), (n), (params), (stop_stage), (stop_step),                 \
                   "run " #views " until " #stop_stage " step " #stop_step, __LINE__)

/* Valid requests are accepted. To keep this quick, each run is stopped by its progress callback
 * once its views are encoded or after one sampler step; test_generate runs to the end. */
static void test_run_accepted(recon_model *model) {
    recon_image png = png_view();
    recon_image cut = cutout_view();
    recon_run_params rp;
    recon_run_params_init(&rp);

    /* Defaults (pipeline.json's 25 + 25 steps): stopped when the first sampler starts. */
    CHECK_ACCEPTED(model, &cut, 1, NULL, RECON_STAGE_SPARSE_STRUCTURE, 0);
    CHECK_ACCEPTED(model, &cut, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);

    /* Without background removal an opaque image or a photo cannot be preprocessed: NULL params
     * and v1 structs (what programs built against v1 pass) keep v1's answer,
     * RECON_ERR_UNSUPPORTED, as does RECON_BACKGROUND_NEVER; without preprocessing the same image
     * is accepted. */
    recon_image photo = photo_view();
    CHECK_STATUS_M(model, run_views(model, &png, 1, NULL), RECON_ERR_UNSUPPORTED);
    CHECK_MSG(contains(recon_model_last_error(model), "background"), recon_model_last_error(model));
    printf("opaque image: %s\n", recon_model_last_error(model));
    CHECK_STATUS_M(model, run_views(model, &photo, 1, NULL), RECON_ERR_UNSUPPORTED);
    recon_run_params v1;
    memset(&v1, 0xAB, sizeof v1); /* where v2's fields are: invalid values, never read */
    (recon_run_params_init)(&v1);
    CHECK(v1.struct_size == 56);
    CHECK_STATUS_M(model, run_views(model, &photo, 1, &v1), RECON_ERR_UNSUPPORTED);
    CHECK_MSG(contains(recon_model_last_error(model), "background"), recon_model_last_error(model));
    CHECK_STATUS_M(model, run_views(model, &png, 1, &v1), RECON_ERR_UNSUPPORTED);
    rp.remove_background = RECON_BACKGROUND_NEVER;
    CHECK_STATUS_M(model, run_views(model, &photo, 1, &rp), RECON_ERR_UNSUPPORTED);
    CHECK_STATUS_M(model, run_views(model, &png, 1, &rp), RECON_ERR_UNSUPPORTED);
    rp.remove_background = RECON_BACKGROUND_AUTO;
    /* v1 and v2 structs take the same path through the rest: a cut-out is accepted. */
    CHECK_ACCEPTED(model, &cut, 1, &v1, RECON_STAGE_SPARSE_STRUCTURE, 0);
    /* Skipping the camera estimation is accepted (TRELLIS estimates none anyway). */
    rp.estimate_cameras = 0;
    CHECK_ACCEPTED(model, &cut, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    rp.estimate_cameras = 1;
    rp.preprocess = 0;
    CHECK_ACCEPTED(model, &png, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    v1.preprocess = 0;
    CHECK_ACCEPTED(model, &photo, 1, &v1, RECON_STAGE_SPARSE_STRUCTURE, 0);

    /* Explicit, in-range settings: one sampler step runs. */
    rp.seed = 7;
    rp.sparse_structure_steps = 12;
    rp.slat_steps = 1000;
    rp.sparse_structure_cfg_strength = 0.0f;
    rp.slat_cfg_strength = 100.0f;
    rp.formats = RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH | RECON_FORMAT_RADIANCE_FIELD;
    rp.preprocess = 0;
    CHECK_ACCEPTED(model, &png, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 1);

    /* Several views (encoded, raw RGB, padded RGBA), both modes: one sampler step each. */
    unsigned char rgb[4 * 4 * 3], rgba[4 * 20];
    memset(rgb, 128, sizeof rgb);
    memset(rgba, 255, sizeof rgba);
    recon_image views[3] = {png, png, png};
    views[1].format = RECON_IMAGE_RGB8;
    views[1].data = rgb;
    views[1].size = sizeof rgb;
    views[1].width = views[1].height = 4;
    views[2].format = RECON_IMAGE_RGBA8;
    views[2].data = rgba;
    views[2].size = sizeof rgba;
    views[2].width = views[2].height = 4;
    views[2].stride = 20;
    recon_run_params_init(&rp);
    rp.preprocess = 0;
    rp.multi_image_mode = RECON_MULTI_IMAGE_STOCHASTIC;
    CHECK_ACCEPTED(model, views, 3, &rp, RECON_STAGE_SPARSE_STRUCTURE, 1);
    rp.multi_image_mode = RECON_MULTI_IMAGE_MULTIDIFFUSION;
    CHECK_ACCEPTED(model, views, 3, &rp, RECON_STAGE_SPARSE_STRUCTURE, 1);

    /* Preprocessed cut-outs: tightly packed and with padded rows. */
    enum { PADDED_STRIDE = CUTOUT_SIDE * 4 + 12 };
    static unsigned char padded[CUTOUT_SIDE * PADDED_STRIDE];
    for (int y = 0; y < CUTOUT_SIDE; y++)
        memcpy(padded + y * PADDED_STRIDE, g_cutout + y * CUTOUT_SIDE * 4, CUTOUT_SIDE * 4);
    recon_image cuts[2] = {cut, cut};
    cuts[1].data = padded;
    cuts[1].size = sizeof padded;
    cuts[1].stride = PADDED_STRIDE;
    CHECK_ACCEPTED(model, cuts, 2, NULL, RECON_STAGE_SPARSE_STRUCTURE, 0);

    /* Progress: reports arrive with user_data; returning 0 cancels the run at once. */
    progress_capture cap;
    memset(&cap, 0, sizeof cap);
    cap.answer = 0;
    recon_run_params_init(&rp);
    rp.progress_callback = on_progress;
    rp.progress_user_data = &cap;
    CHECK_STATUS_M(model, run_views(model, views, 2, &rp), RECON_ERR_CANCELLED);
    CHECK(cap.calls == 1);
    CHECK(cap.last_stage == RECON_STAGE_PREPROCESS && cap.last_total == 2);
    CHECK(contains(recon_model_last_error(model), "cancel"));
}

/* ---------------------------------------------------------------------------------------------
 * A real generation: outputs, progress, exports.
 */

#define CHECK_STATUS_R(result, expr, want)                                                   \
    do {                                                                                     \
        recon_status st_ = (expr);                                                           \
        check_status_impl(st_, (want), #expr, recon_result_last_error(result), __LINE__);    \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* What later runs compare with: the first generation's Gaussians. */
typedef struct {
    size_t count;
    float *xyz; /* malloc'ed copy, count × 3 */
} generation_summary;

/* Checks the Gaussians of `result` (activated values, see recon_gaussians); returns the count. */
static size_t check_gaussians(const recon_result *result, generation_summary *keep) {
    recon_gaussians g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    CHECK_STATUS_R(result, recon_result_gaussians(result, &g), RECON_OK);
    CHECK(g.struct_size == sizeof g);
    CHECK(g.count > 0);
    if (g.count == 0 || !g.xyz || !g.features_dc || !g.scaling || !g.rotation || !g.opacity) {
        CHECK_MSG(0, "Gaussian arrays missing");
        return 0;
    }
    size_t n = g.count;
    CHECK(all_finite(g.xyz, 3 * n));
    CHECK(all_finite(g.features_dc, 3 * n));
    CHECK(all_finite(g.scaling, 3 * n));
    CHECK(all_finite(g.rotation, 4 * n));
    CHECK(all_finite(g.opacity, n));
    size_t bad_opacity = 0, bad_scale = 0, bad_rotation = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(g.opacity[i] >= 0.0f && g.opacity[i] <= 1.0f)) bad_opacity++;
        for (int k = 0; k < 3; k++)
            if (!(g.scaling[3 * i + k] > 0.0f)) bad_scale++;
        const float *q = g.rotation + 4 * i;
        double norm = sqrt((double)q[0] * q[0] + (double)q[1] * q[1] + (double)q[2] * q[2] +
                           (double)q[3] * q[3]);
        if (!(fabs(norm - 1.0) < 1e-3)) bad_rotation++;
    }
    CHECK(bad_opacity == 0);   /* opacities in 0..1 */
    CHECK(bad_scale == 0);     /* positive scales */
    CHECK(bad_rotation == 0);  /* unit quaternions */
    /* The arrays are owned by the result: a second call gives the same pointers. */
    recon_gaussians again = {.struct_size = sizeof again};
    CHECK_STATUS_R(result, recon_result_gaussians(result, &again), RECON_OK);
    CHECK(again.xyz == g.xyz && again.count == g.count);
    if (keep) {
        keep->count = n;
        keep->xyz = malloc(3 * n * sizeof(float));
        if (keep->xyz) memcpy(keep->xyz, g.xyz, 3 * n * sizeof(float));
    }
    return n;
}

/* Checks the mesh of `result`; writes its vertex and face counts. */
static void check_mesh(const recon_result *result, size_t *num_vertices, size_t *num_faces) {
    recon_mesh m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    *num_vertices = *num_faces = 0;
    CHECK_STATUS_R(result, recon_result_mesh(result, &m), RECON_OK);
    CHECK(m.num_vertices > 0 && m.num_faces > 0);
    if (m.num_vertices == 0 || m.num_faces == 0 || !m.positions || !m.indices) {
        CHECK_MSG(0, "mesh arrays missing");
        return;
    }
    CHECK(all_finite(m.positions, 3 * m.num_vertices));
    if (m.colors) {
        CHECK(all_finite(m.colors, 3 * m.num_vertices));
        size_t bad_color = 0;
        for (size_t i = 0; i < 3 * m.num_vertices; i++)
            if (!(m.colors[i] >= 0.0f && m.colors[i] <= 1.0f)) bad_color++;
        CHECK(bad_color == 0); /* colours in 0..1 */
    }
    size_t bad_index = 0;
    for (size_t i = 0; i < 3 * m.num_faces; i++)
        if (m.indices[i] >= m.num_vertices) bad_index++;
    CHECK(bad_index == 0); /* every index names a vertex */
    *num_vertices = m.num_vertices;
    *num_faces = m.num_faces;
}

/* The progress reports of a whole run: every stage from PREPROCESS to DECODE, in order; within a
 * stage the steps count up by one from 0 to its total; the samplers' totals are their steps. */
static void check_progress_sequence(const progress_capture *cap, uint32_t ss_steps,
                                    uint32_t slat_steps, double end) {
    size_t kept = sizeof cap->reports / sizeof cap->reports[0];
    size_t n = cap->num_reports < kept ? cap->num_reports : kept;
    CHECK(cap->bad == 0);
    CHECK_MSG(cap->num_reports <= kept, "more progress reports than this test keeps");
    int seen[RECON_STAGE_EXPORT + 1] = {0};
    int in_order = n > 0, totals_ok = 1;
    for (size_t i = 0; i < n; i++) {
        const report *r = &cap->reports[i];
        if (r->stage < RECON_STAGE_PREPROCESS || r->stage > RECON_STAGE_EXPORT) {
            in_order = 0;
            continue;
        }
        seen[r->stage] = 1;
        if (r->stage == RECON_STAGE_SPARSE_STRUCTURE) totals_ok &= r->total == ss_steps;
        if (r->stage == RECON_STAGE_STRUCTURED_LATENT) totals_ok &= r->total == slat_steps;
        if (i == 0) {
            in_order &= r->stage == RECON_STAGE_PREPROCESS && r->step == 0;
            continue;
        }
        const report *prev = &cap->reports[i - 1];
        if (r->stage == prev->stage)
            in_order &= r->step == prev->step + 1 && r->total == prev->total;
        else
            in_order &= r->stage > prev->stage && r->step == 0 && prev->step == prev->total;
    }
    if (n > 0) in_order &= cap->reports[n - 1].step == cap->reports[n - 1].total;
    CHECK(in_order);
    CHECK(totals_ok);
    for (int stage = RECON_STAGE_PREPROCESS; stage <= RECON_STAGE_DECODE; stage++)
        CHECK_MSG(seen[stage], "a stage was never reported");
    CHECK(n > 0 && cap->reports[n - 1].stage == RECON_STAGE_DECODE);

    /* The sequence, and how long each stage took (first report to the next stage's first). */
    printf("progress:");
    for (size_t i = 0; i < n; i++)
        printf(" %d:%u/%u", (int)cap->reports[i].stage, (unsigned)cap->reports[i].step,
               (unsigned)cap->reports[i].total);
    printf("\nstage seconds:");
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && cap->reports[i].stage == cap->reports[i - 1].stage) continue;
        double until = end;
        for (size_t j = i + 1; j < n; j++) {
            if (cap->reports[j].stage != cap->reports[i].stage) {
                until = cap->reports[j].at;
                break;
            }
        }
        printf(" %d:%.2f", (int)cap->reports[i].stage, until - cap->reports[i].at);
    }
    printf("\n");
}

/* The first occurrence of `needle` in bytes[0..size), or NULL. */
static const unsigned char *find_bytes(const unsigned char *bytes, size_t size,
                                       const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; n <= size && i <= size - n; i++)
        if (memcmp(bytes + i, needle, n) == 0) return bytes + i;
    return NULL;
}

/* A PLY file's header as a NUL-terminated string (malloc'ed), and its length; NULL if none. */
static char *ply_header(const unsigned char *bytes, size_t size, size_t *header_len) {
    if (size < 4 || memcmp(bytes, "ply\n", 4) != 0) return NULL;
    const unsigned char *end = find_bytes(bytes, size < 65536 ? size : 65536, "end_header\n");
    if (!end) return NULL;
    *header_len = (size_t)(end - bytes) + strlen("end_header\n");
    char *header = malloc(*header_len + 1);
    if (!header) return NULL;
    memcpy(header, bytes, *header_len);
    header[*header_len] = '\0';
    return header;
}

/* The count of "element <name> N" in a PLY header; (size_t)-1 when absent. */
static size_t ply_element_count(const char *header, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "\nelement %s ", name);
    const char *at = strstr(header, key);
    unsigned long long n = 0;
    if (!at || sscanf(at + strlen(key), "%llu", &n) != 1) return (size_t)-1;
    return (size_t)n;
}

/* glTF 2.0 binary: "glTF", version 2, the total length, then a JSON chunk (and a BIN chunk). */
static void check_glb(const unsigned char *bytes, size_t size) {
    CHECK(size >= 20);
    if (size < 20) return;
    CHECK(memcmp(bytes, "glTF", 4) == 0);
    CHECK(le32(bytes + 4) == 2);
    CHECK(le32(bytes + 8) == size); /* the length field matches the file */
    uint32_t json_len = le32(bytes + 12);
    CHECK(memcmp(bytes + 16, "JSON", 4) == 0);
    CHECK((size_t)json_len + 20 <= size);
    if ((size_t)json_len + 20 + 8 <= size) {
        CHECK(memcmp(bytes + 20 + json_len + 4, "BIN\0", 4) == 0);
        CHECK(20 + (size_t)json_len + 8 + le32(bytes + 20 + json_len) == size);
    }
    CHECK(find_bytes(bytes + 20, json_len, "\"POSITION\"") != NULL);
}

/* A Gaussian PLY: binary little-endian floats, one vertex record per Gaussian. */
static void check_gaussian_ply(const unsigned char *bytes, size_t size, size_t count) {
    size_t header_len = 0;
    char *header = ply_header(bytes, size, &header_len);
    CHECK_MSG(header != NULL, "no PLY header");
    if (!header) return;
    CHECK(strstr(header, "\nformat binary_little_endian 1.0\n") != NULL);
    CHECK(ply_element_count(header, "vertex") == count); /* one vertex per Gaussian */
    size_t properties = 0;
    for (const char *p = header; (p = strstr(p, "\nproperty float ")) != NULL; p++) properties++;
    CHECK(properties >= 14); /* x y z, f_dc, opacity, scale, rot at least */
    CHECK(size == header_len + count * properties * 4);
    printf("Gaussian PLY: %zu bytes, %zu Gaussians of %zu floats\n", size, count, properties);
    free(header);
}

/* Counts the lines of `text` that start with `prefix`. */
static size_t count_lines(const unsigned char *text, size_t size, const char *prefix) {
    size_t n = 0, len = strlen(prefix);
    for (size_t i = 0; i < size; i++) {
        int line_start = i == 0 || text[i - 1] == '\n';
        if (line_start && size - i >= len && memcmp(text + i, prefix, len) == 0) n++;
    }
    return n;
}

/* Exports `result` in every format, to files and buffers, and checks the files. */
static void test_exports(const recon_result *result, size_t gaussians, size_t num_vertices,
                         size_t num_faces) {
    char glb_path[512], obj_path[512], missing[512];
    path_join(glb_path, sizeof glb_path, g_tmp, "asset.glb");
    path_join(obj_path, sizeof obj_path, g_tmp, "asset.obj");
    path_join(missing, sizeof missing, g_tmp, "no_such_dir/asset.glb");

    /* GLB to a file, and the same bytes to a buffer. */
    double t0 = now_seconds();
    CHECK_STATUS_R(result, recon_result_export(result, RECON_EXPORT_GLB, glb_path), RECON_OK);
    double glb_seconds = now_seconds() - t0;
    size_t glb_size = 0;
    unsigned char *glb = read_all(glb_path, &glb_size);
    CHECK_MSG(glb != NULL, glb_path);
    if (glb) check_glb(glb, glb_size);
    printf("GLB: %zu bytes in %.2f s\n", glb_size, glb_seconds);
    recon_buffer *buf = NULL;
    CHECK_STATUS_R(result, recon_result_export_buffer(result, RECON_EXPORT_GLB, &buf), RECON_OK);
    CHECK(buf != NULL && recon_buffer_size(buf) == glb_size);
    CHECK(glb && buf && recon_buffer_data(buf) &&
          memcmp(recon_buffer_data(buf), glb, glb_size) == 0);
    recon_buffer_free(buf);

    /* GLB with cameras: TRELLIS estimates no poses, so the same file as the plain GLB. */
    buf = NULL;
    CHECK_STATUS_R(result,
                   recon_result_export_buffer(result, RECON_EXPORT_GLB_WITH_CAMERAS, &buf),
                   RECON_OK);
    CHECK(buf != NULL && recon_buffer_size(buf) == glb_size);
    CHECK(glb && buf && recon_buffer_data(buf) &&
          memcmp(recon_buffer_data(buf), glb, glb_size) == 0);
    CHECK(buf && !find_bytes(recon_buffer_data(buf), recon_buffer_size(buf), "\"cameras\""));
    recon_buffer_free(buf);
    free(glb);

    /* Gaussian PLY to a buffer. */
    buf = NULL;
    CHECK_STATUS_R(result, recon_result_export_buffer(result, RECON_EXPORT_PLY_GAUSSIANS, &buf),
                   RECON_OK);
    if (buf) check_gaussian_ply(recon_buffer_data(buf), recon_buffer_size(buf), gaussians);
    recon_buffer_free(buf);

    /* Mesh PLY to a buffer. */
    buf = NULL;
    CHECK_STATUS_R(result, recon_result_export_buffer(result, RECON_EXPORT_PLY_MESH, &buf),
                   RECON_OK);
    size_t header_len = 0;
    char *header = buf ? ply_header(recon_buffer_data(buf), recon_buffer_size(buf), &header_len)
                       : NULL;
    CHECK_MSG(header != NULL, "no mesh PLY header");
    if (header) {
        CHECK(ply_element_count(header, "vertex") == num_vertices);
        CHECK(ply_element_count(header, "face") == num_faces);
    }
    free(header);
    recon_buffer_free(buf);

    /* OBJ to a file: a "v" line per vertex and an "f" line per triangle. */
    CHECK_STATUS_R(result, recon_result_export(result, RECON_EXPORT_OBJ, obj_path), RECON_OK);
    size_t obj_size = 0;
    unsigned char *obj = read_all(obj_path, &obj_size);
    CHECK_MSG(obj != NULL, obj_path);
    if (obj) {
        CHECK(count_lines(obj, obj_size, "v ") == num_vertices);
        CHECK(count_lines(obj, obj_size, "f ") == num_faces);
    }
    free(obj);

    /* Refusals: unknown formats, a directory that does not exist, NULL arguments. */
    const int32_t bad_formats[] = {0, RECON_EXPORT_GLB_WITH_CAMERAS + 1, -1};
    for (size_t i = 0; i < sizeof bad_formats / sizeof bad_formats[0]; i++) {
        CHECK_STATUS(recon_result_export(result, bad_formats[i], glb_path),
                     RECON_ERR_INVALID_ARGUMENT);
        CHECK(contains(recon_result_last_error(result), "format"));
        buf = (recon_buffer *)&g_tmp;
        CHECK_STATUS(recon_result_export_buffer(result, bad_formats[i], &buf),
                     RECON_ERR_INVALID_ARGUMENT);
        CHECK(buf == (recon_buffer *)&g_tmp); /* untouched */
    }
    CHECK_STATUS_R(result, recon_result_export(result, RECON_EXPORT_GLB, missing), RECON_ERR_IO);
    CHECK(access(missing, F_OK) != 0);
    CHECK_STATUS(recon_result_export(result, RECON_EXPORT_GLB, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_export_buffer(result, RECON_EXPORT_GLB, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
}

/* The result accessors' refusals on a real result. */
static void test_result_accessor_errors(const recon_result *result) {
    CHECK(recon_result_num_cameras(result) == 0); /* TRELLIS estimates no poses */
    recon_camera cam;
    memset(&cam, 0, sizeof cam);
    cam.struct_size = sizeof cam;
    CHECK_STATUS(recon_result_camera(result, 0, &cam), RECON_ERR_INVALID_ARGUMENT);
    CHECK(cam.width == 0); /* untouched */
    CHECK(contains(recon_result_last_error(result), "out of range"));
    float extrinsic[16], intrinsic[9];
    for (size_t i = 0; i < 16; i++) extrinsic[i] = -7.0f;
    for (size_t i = 0; i < 9; i++) intrinsic[i] = -7.0f;
    const size_t bad_indices[] = {0, 1, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad_indices / sizeof bad_indices[0]; i++) {
        CHECK_STATUS(recon_result_camera_matrices(result, bad_indices[i], extrinsic, intrinsic),
                     RECON_ERR_INVALID_ARGUMENT);
        CHECK(contains(recon_result_last_error(result), "out of range"));
    }
    CHECK_STATUS(recon_result_camera_matrices(result, 0, NULL, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(extrinsic[0] == -7.0f && extrinsic[15] == -7.0f && intrinsic[8] == -7.0f); /* untouched */
    CHECK_STATUS(recon_result_gaussians(result, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_mesh(result, NULL), RECON_ERR_INVALID_ARGUMENT);
    struct {
        recon_gaussians g;
        unsigned char tail[64];
    } big;
    const uint32_t sizes[] = {0, 4, (uint32_t)sizeof(recon_gaussians) - 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        memset(&big, 0, sizeof big);
        big.g.struct_size = sizes[i];
        CHECK_STATUS(recon_result_gaussians(result, &big.g), RECON_ERR_INVALID_ARGUMENT);
        CHECK(big.g.count == 0 && big.g.xyz == NULL);
        CHECK(contains(recon_result_last_error(result), "struct_size"));
    }
}

/* Entries of a folder named frame_*.png (-1 when it cannot be opened). */
static int count_frame_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL)
        if (strncmp(entry->d_name, "frame_", 6) == 0 && strstr(entry->d_name, ".png")) n++;
    closedir(d);
    return n;
}

/* Small turntables of a generated result on the CPU: each content through the callback, a
 * callback that stops, PNG folders and MP4 files written by the library, and the refusals. */
static void test_turntable(const recon_result *result, int has_colors) {
    recon_turntable_params tp;
    recon_turntable_params_init(&tp);
    tp.frames = 3;
    tp.resolution = 24;
    tp.device = RECON_DEVICE_CPU;
    tp.mesh_ssaa = 2;
    const int32_t contents[] = {RECON_TURNTABLE_GAUSSIANS, RECON_TURNTABLE_MESH_NORMALS,
                                RECON_TURNTABLE_MESH_COLORS};
    for (size_t i = 0; i < 3; i++) {
        tp.content = contents[i];
        frame_capture cap;
        memset(&cap, 0, sizeof cap);
        double t0 = now_seconds();
        recon_status st = recon_result_render_turntable(result, &tp, on_frame_count, &cap);
        if (contents[i] == RECON_TURNTABLE_MESH_COLORS && !has_colors) {
            CHECK_STATUS(st, RECON_ERR_INVALID_ARGUMENT);
            CHECK(contains(recon_result_last_error(result), "vertex colours"));
            continue;
        }
        check_status_impl(st, RECON_OK, "recon_result_render_turntable",
                          recon_result_last_error(result), __LINE__);
        printf("turntable (content %d, 3 frames of 24x24, CPU): %.2f s, %llu covered pixels\n",
               (int)contents[i], now_seconds() - t0, (unsigned long long)cap.covered);
        CHECK(cap.frames == 3 && cap.bad == 0);
        CHECK(cap.count == 3 && cap.width == 24 && cap.height == 24);
    }
    /* The same params give the same frames. */
    tp.content = RECON_TURNTABLE_MESH_NORMALS;
    frame_capture a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    CHECK_STATUS_R(result, recon_result_render_turntable(result, &tp, on_frame_count, &a),
                   RECON_OK);
    CHECK_STATUS_R(result, recon_result_render_turntable(result, &tp, on_frame_count, &b),
                   RECON_OK);
    CHECK(a.checksum == b.checksum && a.covered == b.covered);
    /* A callback returning 0 stops the render. */
    frame_capture stop;
    memset(&stop, 0, sizeof stop);
    stop.stop_after = 2;
    CHECK_STATUS(recon_result_render_turntable(result, &tp, on_frame_count, &stop),
                 RECON_ERR_CANCELLED);
    CHECK(stop.frames == 2);
    CHECK(contains(recon_result_last_error(result), "cancelled"));

    /* Written by the library: a PNG folder, and an MP4 when the build has the encoder. */
    char dir[512], mp4[512], gif[512], missing[512];
    path_join(dir, sizeof dir, g_tmp, "turntable_frames");
    path_join(mp4, sizeof mp4, g_tmp, "turntable.mp4");
    path_join(gif, sizeof gif, g_tmp, "turntable.gif");
    path_join(missing, sizeof missing, g_tmp, "no_such_dir/turntable.mp4");
    frame_capture progress;
    memset(&progress, 0, sizeof progress);
    CHECK_STATUS_R(result, recon_result_write_turntable(result, &tp, dir, on_frame_count, &progress),
                   RECON_OK);
    CHECK(progress.frames == 3 && progress.bad == 0);
    CHECK(count_frame_files(dir) == 3);
    size_t png_size = 0;
    char first[600];
    snprintf(first, sizeof first, "%s/frame_0000.png", dir);
    unsigned char *png = read_all(first, &png_size);
    CHECK(png && png_size > 8 && memcmp(png, "\x89PNG", 4) == 0);
    free(png);
    /* Rewriting replaces the folder whole (2 frames now). */
    tp.frames = 2;
    CHECK_STATUS_R(result, recon_result_write_turntable(result, &tp, dir, NULL, NULL), RECON_OK);
    CHECK(count_frame_files(dir) == 2);
    if (recon_mp4_supported()) {
        CHECK_STATUS_R(result, recon_result_write_turntable(result, &tp, mp4, NULL, NULL),
                       RECON_OK);
        size_t size = 0;
        unsigned char *bytes = read_all(mp4, &size);
        CHECK(bytes && size > 32 && memcmp(bytes + 4, "ftyp", 4) == 0);
        free(bytes);
    } else {
        CHECK_STATUS(recon_result_write_turntable(result, &tp, mp4, NULL, NULL),
                     RECON_ERR_UNSUPPORTED);
        CHECK(access(mp4, F_OK) != 0);
    }
    /* A stopped write leaves nothing. */
    char stopped[512];
    path_join(stopped, sizeof stopped, g_tmp, "stopped_frames");
    memset(&stop, 0, sizeof stop);
    stop.stop_after = 1;
    CHECK_STATUS(recon_result_write_turntable(result, &tp, stopped, on_frame_count, &stop),
                 RECON_ERR_CANCELLED);
    CHECK(access(stopped, F_OK) != 0);

    /* Refusals name the field; nothing is written. */
    CHECK_STATUS(recon_result_write_turntable(result, &tp, gif, NULL, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), ".gif"));
    CHECK_STATUS(recon_result_write_turntable(result, &tp, missing, NULL, NULL), RECON_ERR_IO);
    CHECK_STATUS(recon_result_write_turntable(result, &tp, NULL, NULL, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_render_turntable(result, &tp, NULL, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), "callback"));
    recon_turntable_params bad = tp;
    bad.content = 9;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), "content is 9"));
    bad = tp;
    bad.frames = 0;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    bad = tp;
    bad.resolution = 100000;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    bad = tp;
    bad.fov_degrees = NAN;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    bad = tp;
    bad.device = -7;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    bad = tp;
    bad.device = 1000; /* no such CUDA device */
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_DEVICE);
    bad = tp;
    bad.struct_size = 8;
    CHECK_STATUS(recon_result_render_turntable(result, &bad, on_frame_count, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), "struct_size"));
}

/* Textured exports with small settings on the CPU (the defaults are TRELLIS's to_glb, minutes
 * on a CPU): a GLB with a baked texture to a buffer, OBJ + MTL + PNG to files, vertex colours
 * only, and the refusals. */
static void test_textured_export(const recon_result *result) {
    recon_textured_export_params xp;
    recon_textured_export_params_init(&xp);
    CHECK(xp.struct_size == sizeof xp);
    CHECK(xp.simplify == 0.95f && xp.texture_size == 1024 && xp.views == 100);
    CHECK(xp.bake_mode == RECON_BAKE_OPTIMIZE && xp.bake_steps == 2500);
    CHECK(xp.image_format == RECON_TEXTURE_PNG && xp.device == RECON_DEVICE_AUTO);
    xp.device = RECON_DEVICE_CPU;
    xp.bake_mode = RECON_BAKE_FAST;
    xp.texture_size = 64;
    xp.views = 4;
    xp.render_resolution = 64;
    xp.fill_holes_views = 8;
    xp.fill_holes_resolution = 64;

    recon_buffer *buf = NULL;
    double t0 = now_seconds();
    CHECK_STATUS_R(result, recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &xp, &buf),
                   RECON_OK);
    printf("textured GLB (simplify 0.95, 64^2 texture, fast bake from 4 views, CPU): %.2f s, "
           "%zu bytes\n",
           now_seconds() - t0, buf ? recon_buffer_size(buf) : (size_t)0);
    if (buf) {
        const unsigned char *glb = recon_buffer_data(buf);
        size_t size = recon_buffer_size(buf);
        check_glb(glb, size);
        CHECK(find_bytes(glb, size, "\"baseColorTexture\"") != NULL);
        CHECK(find_bytes(glb, size, "\"TEXCOORD_0\"") != NULL);
        CHECK(find_bytes(glb, size, "image/png") != NULL);
    }
    recon_buffer_free(buf);

    char obj[512], mtl[512], png[512];
    path_join(obj, sizeof obj, g_tmp, "textured.obj");
    path_join(mtl, sizeof mtl, g_tmp, "textured.mtl");
    path_join(png, sizeof png, g_tmp, "textured.png");
    CHECK_STATUS_R(result, recon_result_export_textured(result, RECON_EXPORT_OBJ, &xp, obj),
                   RECON_OK);
    size_t obj_size = 0, mtl_size = 0, png_size = 0;
    unsigned char *obj_bytes = read_all(obj, &obj_size);
    unsigned char *mtl_bytes = read_all(mtl, &mtl_size);
    unsigned char *png_bytes = read_all(png, &png_size);
    CHECK(obj_bytes && find_bytes(obj_bytes, obj_size, "mtllib textured.mtl") != NULL);
    CHECK(obj_bytes && count_lines(obj_bytes, obj_size, "vt ") > 0);
    CHECK(mtl_bytes && find_bytes(mtl_bytes, mtl_size, "map_Kd textured.png") != NULL);
    CHECK(png_bytes && png_size > 8 && memcmp(png_bytes, "\x89PNG", 4) == 0);
    free(obj_bytes);
    free(mtl_bytes);
    free(png_bytes);

    /* Vertex colours only: COLOR_0, no texture. */
    xp.vertex_colors_only = 1;
    buf = NULL;
    CHECK_STATUS_R(result, recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &xp, &buf),
                   RECON_OK);
    if (buf) {
        CHECK(find_bytes(recon_buffer_data(buf), recon_buffer_size(buf), "\"COLOR_0\"") != NULL);
        CHECK(find_bytes(recon_buffer_data(buf), recon_buffer_size(buf), "baseColorTexture") ==
              NULL);
    }
    recon_buffer_free(buf);
    xp.vertex_colors_only = 0;

    /* Refusals: formats without textures, OBJ to a buffer, bad fields, NULLs. */
    char never[512];
    path_join(never, sizeof never, g_tmp, "never_textured.ply");
    CHECK_STATUS(recon_result_export_textured(result, RECON_EXPORT_PLY_MESH, &xp, never),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(access(never, F_OK) != 0);
    buf = (recon_buffer *)&g_tmp;
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_OBJ, &xp, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp); /* untouched */
    CHECK(contains(recon_result_last_error(result), "several files"));
    recon_textured_export_params bad = xp;
    bad.bake_mode = 7;
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &bad, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), "bake_mode is 7"));
    bad = xp;
    bad.simplify = 1.5f;
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &bad, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(contains(recon_result_last_error(result), "simplify"));
    bad = xp;
    bad.struct_size = 12;
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &bad, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp); /* untouched */
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, &xp, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(recon_result_export_textured(result, RECON_EXPORT_GLB, &xp, NULL),
                 RECON_ERR_INVALID_ARGUMENT);
}

/* Generates Gaussians and a mesh from the cut-out with 2 + 2 sampler steps, and checks them,
 * the progress reports and every export. Keeps the Gaussians in *first for later runs. */
/* ---------------------------------------------------------------------------------------------
 * recon_run_params v2: background removal (with the tiny BiRefNet) and the guidance formula.
 */

/* Counts the model's "background removal: BiRefNet from ..." messages (one per BiRefNet load). */
static void on_log_birefnet(int32_t level, const char *message, void *user_data) {
    (void)level;
    if (message && strstr(message, "background removal: BiRefNet from")) ++*(int *)user_data;
}

/* The tiny model with `background_model` as its BiRefNet source. */
static recon_model *load_tiny_with_birefnet(const char *background_model, int *loads) {
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = g_model;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    lp.background_model = background_model;
    lp.log_callback = on_log_birefnet;
    lp.log_user_data = loads;
    recon_model *model = NULL;
    char err[1024] = "";
    check_status_impl(recon_load(&lp, &model, err, sizeof err), RECON_OK,
                      "load the tiny model with a BiRefNet source", err, __LINE__);
    return model;
}

/* Quick settings: one step per sampler, Gaussians only (a generation on the CPU is mostly the
 * structured-latent sampler: about 7 s a step here). */
static recon_run_params quick_params(void) {
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = 3;
    rp.sparse_structure_steps = 1;
    rp.slat_steps = 1;
    rp.formats = RECON_FORMAT_GAUSSIANS;
    return rp;
}

/* A quick run of `view` with `rp`; the Gaussian centres (malloc'ed; NULL on failure) and their
 * count. */
static float *quick_run(recon_model *model, const recon_image *view, const recon_run_params *rp,
                        size_t *count, const char *what) {
    recon_result *result = NULL;
    double t0 = now_seconds();
    *count = 0;
    check_status_impl(recon_run(model, view, 1, rp, &result), RECON_OK, what,
                      recon_model_last_error(model), __LINE__);
    if (!result) return NULL;
    printf("%s (1 + 1 steps): %.2f s\n", what, now_seconds() - t0);
    float *xyz = NULL;
    size_t n = check_gaussians(result, NULL);
    recon_gaussians g = {.struct_size = sizeof g};
    if (n > 0 && recon_result_gaussians(result, &g) == RECON_OK) {
        xyz = malloc(3 * n * sizeof(float));
        if (xyz) memcpy(xyz, g.xyz, 3 * n * sizeof(float));
        *count = n;
    }
    recon_result_free(result);
    return xyz;
}

/* Guidance formulas, after a quick DEFAULT run of `view` (`reference`, `count` Gaussians): on
 * TRELLIS the pipeline's own formula is TRELLIS's, so RECON_GUIDANCE_TRELLIS gives the same
 * asset; ReconViaGen's formula is accepted and samples. */
static void test_guidance(recon_model *model, const recon_image *view, const float *reference,
                          size_t count) {
    recon_run_params rp = quick_params();
    rp.guidance = RECON_GUIDANCE_TRELLIS;
    size_t n = 0;
    float *xyz = quick_run(model, view, &rp, &n, "RECON_GUIDANCE_TRELLIS");
    CHECK(n == count && n > 0);
    if (xyz && reference && n == count) {
        double max_diff = 0.0;
        for (size_t i = 0; i < 3 * n; i++) {
            double d = fabs((double)xyz[i] - (double)reference[i]);
            if (d > max_diff) max_diff = d;
        }
        printf("guidance DEFAULT vs TRELLIS: %zu Gaussians, centres differ by at most %g\n", n,
               max_diff);
        CHECK(max_diff <= 1e-4);
    }
    free(xyz);
    rp.guidance = RECON_GUIDANCE_RECONVIAGEN;
    CHECK_ACCEPTED(model, view, 1, &rp, RECON_STAGE_STRUCTURED_LATENT, 0);
}

static void test_background_removal(void) {
    recon_image photo = photo_view();
    recon_image cut = cutout_view();
    recon_image png = png_view();

    /* A BiRefNet that cannot be had (an empty folder) fails the run that needs it, naming
     * background removal and the view; views that do not need it are unaffected. */
    char empty[512];
    path_join(empty, sizeof empty, g_tmp, "birefnet_empty");
    mkdir(empty, 0700);
    int loads = 0;
    recon_model *model = load_tiny_with_birefnet(empty, &loads);
    if (model) {
        recon_run_params rp;
        recon_run_params_init(&rp);
        recon_status st = run_views(model, &photo, 1, &rp);
        CHECK(st != RECON_OK && st != RECON_ERR_UNSUPPORTED && st != RECON_ERR_INTERNAL);
        CHECK_MSG(contains(recon_model_last_error(model), "background removal") &&
                      contains(recon_model_last_error(model), "image 0"),
                  recon_model_last_error(model));
        printf("no BiRefNet: %s: %s\n", recon_status_string(st), recon_model_last_error(model));
        CHECK_ACCEPTED(model, &cut, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
        recon_free(model);
    }

    /* The tiny BiRefNet: a photo runs through AUTO end to end. */
    char recipe[512], folder[512];
    path_join(recipe, sizeof recipe, g_model, "../birefnet_tiny");
    path_join(folder, sizeof folder, g_tmp, "birefnet_tiny");
    double t0 = now_seconds();
    int written = write_tiny_birefnet(recipe, folder);
    CHECK_MSG(written, recipe);
    if (!written) return;
    printf("tiny BiRefNet written in %.2f s\n", now_seconds() - t0);
    loads = 0;
    model = load_tiny_with_birefnet(folder, &loads);
    if (!model) return;

    /* A cut-out keeps its own alpha under AUTO: BiRefNet is not even loaded. */
    recon_run_params rp;
    recon_run_params_init(&rp);
    CHECK_ACCEPTED(model, &cut, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    CHECK(loads == 0);
    /* v1 structs and NEVER still refuse the photo, without loading it. */
    recon_run_params v1;
    memset(&v1, 0, sizeof v1);
    (recon_run_params_init)(&v1);
    CHECK_STATUS_M(model, run_views(model, &photo, 1, &v1), RECON_ERR_UNSUPPORTED);
    CHECK_STATUS_M(model, run_views(model, &photo, 1, NULL), RECON_ERR_UNSUPPORTED);
    rp.remove_background = RECON_BACKGROUND_NEVER;
    CHECK_STATUS_M(model, run_views(model, &photo, 1, &rp), RECON_ERR_UNSUPPORTED);
    CHECK(loads == 0);

    /* AUTO on the RGB photo: BiRefNet cuts it out, and the run produces Gaussians. */
    rp = quick_params();
    size_t count = 0;
    float *xyz = quick_run(model, &photo, &rp, &count, "photo through RECON_BACKGROUND_AUTO");
    CHECK(loads == 1);
    printf("photo: %zu Gaussians\n", count);
    /* The guidance formulas on the same view (after the DEFAULT run just made). */
    test_guidance(model, &photo, xyz, count);
    free(xyz);
    /* ALWAYS cuts out views that have alpha too; the opaque PNG goes through AUTO. BiRefNet
     * stays loaded: no second load. */
    rp.remove_background = RECON_BACKGROUND_ALWAYS;
    CHECK_ACCEPTED(model, &cut, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    rp.remove_background = RECON_BACKGROUND_AUTO;
    CHECK_ACCEPTED(model, &png, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    recon_image mixed[2] = {cut, photo};
    CHECK_ACCEPTED(model, mixed, 2, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    CHECK(loads == 1);
    /* Without preprocessing nothing is removed (as in the reference), whatever the setting. */
    rp.remove_background = RECON_BACKGROUND_ALWAYS;
    rp.preprocess = 0;
    CHECK_ACCEPTED(model, &photo, 1, &rp, RECON_STAGE_SPARSE_STRUCTURE, 0);
    recon_free(model);
}

static void test_generate(recon_model *model, generation_summary *first) {
    recon_image view = cutout_view();
    progress_capture cap;
    memset(&cap, 0, sizeof cap);
    cap.answer = 1;
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = 1;
    rp.sparse_structure_steps = GEN_SS_STEPS;
    rp.slat_steps = GEN_SLAT_STEPS;
    rp.formats = RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH;
    rp.progress_callback = on_progress;
    rp.progress_user_data = &cap;
    recon_result *result = NULL;
    double t0 = now_seconds();
    CHECK_STATUS_M(model, recon_run(model, &view, 1, &rp, &result), RECON_OK);
    double end = now_seconds();
    printf("generation (Gaussians + mesh, %d + %d steps): %.2f s\n", GEN_SS_STEPS, GEN_SLAT_STEPS,
           end - t0);
    CHECK(result != NULL);
    check_progress_sequence(&cap, GEN_SS_STEPS, GEN_SLAT_STEPS, end);
    if (!result) return;

    size_t gaussians = check_gaussians(result, first);
    size_t num_vertices = 0, num_faces = 0;
    check_mesh(result, &num_vertices, &num_faces);
    printf("%zu Gaussians; mesh of %zu vertices, %zu triangles\n", gaussians, num_vertices,
           num_faces);
    test_result_accessor_errors(result);
    test_exports(result, gaussians, num_vertices, num_faces);
    recon_mesh mesh = {.struct_size = sizeof mesh};
    int has_colors = recon_result_mesh(result, &mesh) == RECON_OK && mesh.colors != NULL;
    test_turntable(result, has_colors);
    test_textured_export(result);
    recon_result_free(result);
}

/* Cancelling a run from another thread: the run (in a thread) is held in its progress callback
 * once the sparse-structure sampler starts, until this thread has called recon_cancel; so the
 * cancel lands while the run is certainly in progress, and before the sampler's first step. */
typedef struct {
    recon_model *model;
    recon_status status;
    recon_result *result;       /* a sentinel that the failed run must leave untouched */
    atomic_int sampler_started; /* set by the progress callback */
    atomic_int cancel_sent;     /* set by the main thread after recon_cancel */
    int held_too_long;          /* the callback gave up waiting */
    int32_t max_stage;
    uint32_t max_sampler_step;
} cancel_job;

static int32_t on_progress_hold(const recon_progress *p, void *user_data) {
    cancel_job *job = user_data;
    if (p->stage > job->max_stage) job->max_stage = p->stage;
    if (p->stage == RECON_STAGE_SPARSE_STRUCTURE && p->step > job->max_sampler_step)
        job->max_sampler_step = p->step;
    if (p->stage == RECON_STAGE_SPARSE_STRUCTURE && !atomic_load(&job->sampler_started)) {
        atomic_store(&job->sampler_started, 1);
        for (int i = 0; i < 60000 && !atomic_load(&job->cancel_sent); i++) sleep_ms(1);
        if (!atomic_load(&job->cancel_sent)) job->held_too_long = 1;
    }
    return 1;
}

static void *cancel_job_thread(void *arg) {
    cancel_job *job = arg;
    recon_image view = cutout_view();
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.sparse_structure_steps = GEN_SS_STEPS;
    rp.slat_steps = GEN_SLAT_STEPS;
    rp.progress_callback = on_progress_hold;
    rp.progress_user_data = job;
    job->status = recon_run(job->model, &view, 1, &rp, &job->result);
    return NULL;
}

static void test_cancel_from_thread(recon_model *model) {
    static char sentinel;
    cancel_job job;
    memset(&job, 0, sizeof job);
    job.model = model;
    job.status = RECON_OK;
    job.result = (recon_result *)&sentinel;
    atomic_init(&job.sampler_started, 0);
    atomic_init(&job.cancel_sent, 0);
    pthread_t thread;
    double t0 = now_seconds();
    if (pthread_create(&thread, NULL, cancel_job_thread, &job) != 0) {
        CHECK_MSG(0, "pthread_create");
        return;
    }
    while (!atomic_load(&job.sampler_started) && now_seconds() - t0 < 120.0) sleep_ms(1);
    CHECK(atomic_load(&job.sampler_started));
    double t_cancel = now_seconds();
    recon_cancel(model);
    atomic_store(&job.cancel_sent, 1);
    CHECK(pthread_join(thread, NULL) == 0);
    double t_end = now_seconds();
    CHECK_STATUS_M(model, job.status, RECON_ERR_CANCELLED);
    CHECK(job.result == (recon_result *)&sentinel); /* out_result untouched */
    if (job.status == RECON_OK && job.result != (recon_result *)&sentinel)
        recon_result_free(job.result);
    CHECK(!job.held_too_long);
    /* Stopped before the sampler's first step: nothing after SPARSE_STRUCTURE 0/n. */
    CHECK(job.max_stage == RECON_STAGE_SPARSE_STRUCTURE && job.max_sampler_step == 0);
    CHECK_MSG(contains(recon_model_last_error(model), "recon_cancel"),
              recon_model_last_error(model));
    printf("cancelled from the main thread after %.2f s; the run returned %.3f s later: %s\n",
           t_cancel - t0, t_end - t_cancel, recon_model_last_error(model));
}

/* A run with default parameters (NULL: 25 + 25 steps) in a thread, which this thread cancels
 * with recon_cancel every 10 ms until the run returns: whenever the run started, it ends
 * RECON_ERR_CANCELLED. */
typedef struct {
    recon_model *model;
    recon_status status;
    atomic_int done;
} defaults_job;

static void *defaults_job_thread(void *arg) {
    defaults_job *job = arg;
    recon_image view = cutout_view();
    recon_result *result = NULL;
    job->status = recon_run(job->model, &view, 1, NULL, &result);
    recon_result_free(result);
    atomic_store(&job->done, 1);
    return NULL;
}

static void test_cancel_default_run(recon_model *model) {
    defaults_job job;
    job.model = model;
    job.status = RECON_OK;
    atomic_init(&job.done, 0);
    pthread_t thread;
    if (pthread_create(&thread, NULL, defaults_job_thread, &job) != 0) {
        CHECK_MSG(0, "pthread_create");
        return;
    }
    while (!atomic_load(&job.done)) {
        recon_cancel(model);
        sleep_ms(10);
    }
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK_STATUS_M(model, job.status, RECON_ERR_CANCELLED);
}

/* After the cancelled runs the model still works: the first generation again, Gaussians only.
 * The same seed and steps give the same Gaussians. Returns the result, which main frees after
 * the model (a result may outlive its model). */
static recon_result *test_run_after_cancel(recon_model *model, const generation_summary *first) {
    recon_image view = cutout_view();
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = 1;
    rp.sparse_structure_steps = GEN_SS_STEPS;
    rp.slat_steps = GEN_SLAT_STEPS;
    rp.formats = RECON_FORMAT_GAUSSIANS;
    recon_result *result = NULL;
    double t0 = now_seconds();
    CHECK_STATUS_M(model, recon_run(model, &view, 1, &rp, &result), RECON_OK);
    printf("generation (Gaussians only, %d + %d steps): %.2f s\n", GEN_SS_STEPS, GEN_SLAT_STEPS,
           now_seconds() - t0);
    CHECK(result != NULL);
    if (!result) return NULL;
    size_t count = check_gaussians(result, NULL);
    CHECK(count == first->count);
    recon_gaussians g = {.struct_size = sizeof g};
    if (count == first->count && first->xyz &&
        recon_result_gaussians(result, &g) == RECON_OK) {
        double max_diff = 0.0;
        for (size_t i = 0; i < 3 * count; i++) {
            double d = fabs((double)g.xyz[i] - (double)first->xyz[i]);
            if (d > max_diff) max_diff = d;
        }
        printf("same seed again: Gaussian centres differ by at most %g\n", max_diff);
        CHECK(max_diff <= 1e-4);
    }
    /* No mesh was asked for: the mesh accessor and the mesh exports refuse. */
    recon_mesh m = {.struct_size = sizeof m};
    CHECK_STATUS(recon_result_mesh(result, &m), RECON_ERR_INVALID_ARGUMENT);
    CHECK(m.num_vertices == 0 && m.positions == NULL);
    CHECK(contains(recon_result_last_error(result), "mesh"));
    recon_buffer *buf = (recon_buffer *)&g_tmp;
    CHECK_STATUS(recon_result_export_buffer(result, RECON_EXPORT_GLB, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp);
    CHECK(contains(recon_result_last_error(result), "RECON_FORMAT_MESH"));
    CHECK_STATUS(recon_result_export_buffer(result, RECON_EXPORT_GLB_WITH_CAMERAS, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp);
    CHECK(contains(recon_result_last_error(result), "RECON_FORMAT_MESH"));
    recon_turntable_params tp;
    recon_turntable_params_init(&tp);
    tp.content = RECON_TURNTABLE_MESH_NORMALS;
    tp.device = RECON_DEVICE_CPU;
    frame_capture cap;
    memset(&cap, 0, sizeof cap);
    CHECK_STATUS(recon_result_render_turntable(result, &tp, on_frame_count, &cap),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(cap.frames == 0 && contains(recon_result_last_error(result), "mesh"));
    CHECK_STATUS(recon_result_export_textured_buffer(result, RECON_EXPORT_GLB, NULL, &buf),
                 RECON_ERR_INVALID_ARGUMENT);
    CHECK(buf == (recon_buffer *)&g_tmp);
    return result;
}

/* A result outlives its model: read and export it after recon_free(model). */
static void test_result_after_model(recon_result *result, size_t count) {
    recon_gaussians g = {.struct_size = sizeof g};
    CHECK_STATUS_R(result, recon_result_gaussians(result, &g), RECON_OK);
    CHECK(g.count == count && g.count > 0 && all_finite(g.xyz, 3 * g.count));
    recon_buffer *buf = NULL;
    CHECK_STATUS_R(result, recon_result_export_buffer(result, RECON_EXPORT_PLY_GAUSSIANS, &buf),
                   RECON_OK);
    if (buf) check_gaussian_ply(recon_buffer_data(buf), recon_buffer_size(buf), count);
    recon_buffer_free(buf);
}

/* ---------------------------------------------------------------------------------------------
 * Threads.
 */

static void *cancel_thread(void *model) {
    recon_cancel(model);
    recon_cancel(model);
    return NULL;
}

/* Runs in flight, between their first progress report and their stop; more than one means
 * runs on one model overlapped. */
static atomic_int g_runs_in_flight;
static atomic_int g_overlaps;

typedef struct {
    recon_model *model;
    uint64_t seed;
    recon_status status;
    int stopped;
    int result_touched;
} thread_job;

/* Stops the run once its view is encoded (CONDITION), counting runs in flight. */
static int32_t on_thread_progress(const recon_progress *p, void *user_data) {
    thread_job *job = user_data;
    if (p->stage == RECON_STAGE_PREPROCESS && p->step == 0) {
        if (atomic_fetch_add(&g_runs_in_flight, 1) != 0) atomic_fetch_add(&g_overlaps, 1);
    }
    if (p->stage >= RECON_STAGE_CONDITION) {
        atomic_fetch_sub(&g_runs_in_flight, 1);
        job->stopped = 1;
        return 0;
    }
    return 1;
}

static void *run_thread(void *arg) {
    thread_job *job = arg;
    static char sentinel;
    recon_image view = cutout_view();
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = job->seed;
    rp.progress_callback = on_thread_progress;
    rp.progress_user_data = job;
    recon_result *result = (recon_result *)&sentinel;
    job->status = recon_run(job->model, &view, 1, &rp, &result);
    job->result_touched = result != (recon_result *)&sentinel;
    if (job->status == RECON_OK) recon_result_free(result);
    return NULL;
}

static void test_threads(recon_model *model) {
    /* A cancel while no run is active is harmless: the next run clears it, so that run is
     * stopped by its own progress callback, not by recon_cancel. */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cancel_thread, model) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    recon_image cut = cutout_view();
    CHECK_ACCEPTED(model, &cut, 1, NULL, RECON_STAGE_CONDITION, 0);

    /* Concurrent runs on one model are serialised and each gets its own answer. */
    enum { N = 4 };
    pthread_t threads[N];
    thread_job jobs[N];
    atomic_store(&g_runs_in_flight, 0);
    atomic_store(&g_overlaps, 0);
    for (int i = 0; i < N; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].model = model;
        jobs[i].seed = (uint64_t)i;
        jobs[i].status = RECON_OK;
        CHECK(pthread_create(&threads[i], NULL, run_thread, &jobs[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        CHECK_STATUS(jobs[i].status, RECON_ERR_CANCELLED);
        CHECK(jobs[i].stopped == 1 && jobs[i].result_touched == 0);
    }
    CHECK(atomic_load(&g_overlaps) == 0);
    CHECK(atomic_load(&g_runs_in_flight) == 0);
}

/* Two models of the same directory are independent, and each keeps its own error log. */
static void test_two_models(void) {
    log_capture cap;
    memset(&cap, 0, sizeof cap);
    recon_model *a = load_tiny(&cap, RECON_LOG_INFO);
    recon_model *b = load_tiny(&cap, RECON_LOG_INFO);
    CHECK(a != b);
    recon_image png = png_view();
    CHECK_STATUS(run_views(a, &png, 0, NULL), RECON_ERR_INVALID_ARGUMENT);
    CHECK(recon_model_last_error(a)[0] != '\0');
    CHECK(strcmp(recon_model_last_error(b), "") == 0);
    recon_free(a);
    CHECK(strcmp(recon_model_pipeline_name(b), "TrellisImageTo3DPipeline") == 0);
    recon_free(b);
}

int main(int argc, char **argv) {
    g_model = argc > 1 ? argv[1] : getenv("MODEL_DIR");
    if (!g_model || !*g_model) {
        fprintf(stderr, "usage: %s MODEL_DIR (the tiny model, tests/fixtures/model_tiny)\n",
                argv[0]);
        return 2;
    }
    const char *tmpdir = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/recon_test_abi.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 2;
    }

    make_cutout();
    make_photo();
    test_versions();
    test_status_strings();
    test_struct_layout();
    test_init();
    test_null_handles();
    test_load_arguments();
    test_error_buffer();
    test_load_files();
    test_offline_hub();
    test_devices();
    test_logging();
    test_two_models();
    test_background_removal();

    log_capture cap;
    memset(&cap, 0, sizeof cap);
    recon_model *model = load_tiny(&cap, RECON_LOG_INFO);
    if (model) {
        generation_summary first = {0, NULL};
        test_model_introspection(model);
        test_run_validation(model);
        test_run_accepted(model);
        test_threads(model);
        test_generate(model, &first);
        test_cancel_from_thread(model);
        test_cancel_default_run(model);
        recon_result *result = test_run_after_cancel(model, &first);
        recon_cancel(model); /* idle model, main thread */
        recon_free(model);
        if (result) test_result_after_model(result, first.count);
        recon_result_free(result);
        free(first.xyz);
    }

    nftw(g_tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed > 0 ? 1 : 0;
}
