/*
 * example.c — the usage example from the top of recon.h, as a complete program.
 *
 *     example MODEL IMAGE [OUTPUT.glb]
 *
 * MODEL is a local model directory (pipeline.json + ckpts/) or a Hugging Face repo id such as
 * microsoft/TRELLIS-image-large; IMAGE is a PNG, JPEG or WebP file. On success the asset is
 * written to OUTPUT.glb (default asset.glb).
 *
 * Exit status: 0 on success, and also when the library reports RECON_ERR_UNSUPPORTED (a valid
 * request that this build cannot serve yet; the message says what is missing); 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>

#include "recon.h"

/* Prints library log messages to stderr. */
static void on_log(int32_t level, const char *message, void *user_data) {
    static const char *const names[] = {"?", "error", "warn", "info", "debug"};
    (void)user_data;
    fprintf(stderr, "[recon %s] %s\n", (level >= 1 && level <= 4) ? names[level] : "?", message);
}

/* Prints each progress report; returning nonzero lets the run go on. */
static int32_t on_progress(const recon_progress *p, void *user_data) {
    (void)user_data;
    fprintf(stderr, "progress: stage %d, step %u/%u\n", (int)p->stage, (unsigned)p->step,
            (unsigned)p->total);
    return 1;
}

/* Reads a whole file into a malloc'ed buffer; NULL on failure (errno-style message printed). */
static unsigned char *read_file(const char *path, size_t *out_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned char *bytes = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        bytes = malloc(size > 0 ? (size_t)size : 1);
        if (bytes && fread(bytes, 1, (size_t)size, f) != (size_t)size) {
            free(bytes);
            bytes = NULL;
        }
    }
    if (!bytes) fprintf(stderr, "%s: cannot read the file\n", path);
    fclose(f);
    *out_size = (size_t)(size > 0 ? size : 0);
    return bytes;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s MODEL IMAGE [OUTPUT.glb]\n", argv[0]);
        return 2;
    }
    const char *output = argc == 4 ? argv[3] : "asset.glb";
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep stdout and stderr lines in order */

    /* The header and the library must agree on the ABI. */
    if (recon_abi_version() != RECON_ABI_VERSION) {
        fprintf(stderr, "librecon ABI %u, but this program was built for ABI %u\n",
                (unsigned)recon_abi_version(), (unsigned)RECON_ABI_VERSION);
        return 1;
    }
    printf("recon %s (ABI %u), %d CUDA device(s)\n", recon_version_string(),
           (unsigned)recon_abi_version(), (int)recon_cuda_device_count());

    size_t png_size = 0;
    unsigned char *png_bytes = read_file(argv[2], &png_size);
    if (!png_bytes) return 1;

    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = argv[1];
    lp.log_callback = on_log;
    recon_model *model = NULL;
    char err[512];
    recon_status st = recon_load(&lp, &model, err, sizeof err);
    if (st != RECON_OK) {
        fprintf(stderr, "load failed (%s): %s\n", recon_status_string(st), err);
        free(png_bytes);
        return 1;
    }
    printf("loaded %s on %s", recon_model_pipeline_name(model),
           recon_model_device(model) == RECON_DEVICE_CPU ? "CPU" : "CUDA");
    if (recon_model_device(model) != RECON_DEVICE_CPU)
        printf(" %d", (int)recon_model_device(model));
    printf(", %zu network(s)\n", recon_model_num_networks(model));
    for (size_t i = 0; i < recon_model_num_networks(model); i++) {
        recon_network_info info = {.struct_size = sizeof info};
        if (recon_model_network(model, i, &info) == RECON_OK) {
            printf("  %-28s %-28s %10llu elements%s\n", info.key, info.class_name,
                   (unsigned long long)info.num_elements,
                   info.implemented ? "" : " (not implemented yet)");
        }
    }

    recon_image view;
    recon_image_init(&view);
    view.format = RECON_IMAGE_ENCODED; /* PNG/JPEG/WebP bytes */
    view.data = png_bytes;
    view.size = png_size;

    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = 1;
    rp.progress_callback = on_progress;
    recon_result *result = NULL;
    st = recon_run(model, &view, 1, &rp, &result);
    free(png_bytes); /* the bytes are only read during recon_run */

    int exit_code = 1;
    if (st != RECON_OK) {
        fprintf(stderr, "%s: %s\n", recon_status_string(st), recon_model_last_error(model));
        /* Not an error of this program: this build cannot generate yet. */
        if (st == RECON_ERR_UNSUPPORTED) exit_code = 0;
    } else {
        recon_gaussians g = {.struct_size = sizeof g};
        if (recon_result_gaussians(result, &g) == RECON_OK) printf("%zu Gaussians\n", g.count);
        recon_mesh m = {.struct_size = sizeof m};
        if (recon_result_mesh(result, &m) == RECON_OK)
            printf("mesh: %zu vertices, %zu faces\n", m.num_vertices, m.num_faces);
        st = recon_result_export(result, RECON_EXPORT_GLB, output);
        if (st == RECON_OK) {
            printf("wrote %s\n", output);
            exit_code = 0;
        } else {
            fprintf(stderr, "export failed (%s): %s\n", recon_status_string(st),
                    recon_result_last_error(result));
            if (st == RECON_ERR_UNSUPPORTED) exit_code = 0;
        }
        recon_result_free(result);
    }
    recon_free(model);
    return exit_code;
}
