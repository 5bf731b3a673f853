/*
 * example.c — the usage example from the top of recon.h, as a complete program: load a model,
 * generate a 3D asset from one image, export it as GLB.
 *
 *     example MODEL IMAGE [OUTPUT.glb [STEPS]]
 *
 * MODEL is a local model directory (pipeline.json + ckpts/) or a Hugging Face repo id such as
 * microsoft/TRELLIS-image-large; IMAGE is a PNG, JPEG or WebP file, a cut-out with a transparent
 * background (recon does not remove backgrounds yet). The asset is written to OUTPUT.glb
 * (default asset.glb). STEPS, when given and not 0, replaces both samplers' step counts
 * (pipeline.json's, 25 for TRELLIS): `make test-c` runs the tiny model with 2 to be quick.
 *
 * Exit status: 0 when the asset was written, 1 otherwise, 2 for a usage error.
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

/* Prints each progress report; returning nonzero lets the run go on (0 would cancel it). */
static int32_t on_progress(const recon_progress *p, void *user_data) {
    static const char *const stages[] = {"?", "preprocess", "condition", "sparse structure",
                                         "structured latent", "decode", "export"};
    (void)user_data;
    fprintf(stderr, "  %-17s %u/%u\n",
            (p->stage >= 1 && p->stage <= 6) ? stages[p->stage] : "?", (unsigned)p->step,
            (unsigned)p->total);
    return 1;
}

/* Reads a whole file into a malloc'ed buffer; NULL on failure (a message is printed). */
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
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL IMAGE [OUTPUT.glb [STEPS]]\n", argv[0]);
        return 2;
    }
    const char *output = argc >= 4 ? argv[3] : "asset.glb";
    unsigned steps = argc == 5 ? (unsigned)strtoul(argv[4], NULL, 10) : 0;

    /* The header and the library must agree on the ABI. */
    if (recon_abi_version() != RECON_ABI_VERSION) {
        fprintf(stderr, "librecon ABI %u, but this program was built for ABI %u\n",
                (unsigned)recon_abi_version(), (unsigned)RECON_ABI_VERSION);
        return 1;
    }
    printf("recon %s, %d CUDA device(s)\n", recon_version_string(),
           (int)recon_cuda_device_count());

    size_t image_size = 0;
    unsigned char *image_bytes = read_file(argv[2], &image_size);
    if (!image_bytes) return 1;

    /* Load: the default device is the first GPU when there is one, else the CPU. */
    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = argv[1];
    lp.log_callback = on_log;
    recon_model *model = NULL;
    char err[512];
    recon_status st = recon_load(&lp, &model, err, sizeof err);
    if (st != RECON_OK) {
        fprintf(stderr, "load failed (%s): %s\n", recon_status_string(st), err);
        free(image_bytes);
        return 1;
    }
    printf("loaded %s (%zu networks)\n", recon_model_pipeline_name(model),
           recon_model_num_networks(model));

    /* Generate. */
    recon_image view;
    recon_image_init(&view);
    view.format = RECON_IMAGE_ENCODED; /* PNG/JPEG/WebP bytes */
    view.data = image_bytes;
    view.size = image_size;
    recon_run_params rp;
    recon_run_params_init(&rp); /* Gaussians and a mesh */
    rp.seed = 1;
    rp.sparse_structure_steps = steps;
    rp.slat_steps = steps;
    rp.progress_callback = on_progress;
    recon_result *result = NULL;
    st = recon_run(model, &view, 1, &rp, &result);
    free(image_bytes); /* the bytes are only read during recon_run */
    if (st != RECON_OK) {
        fprintf(stderr, "generation failed (%s): %s\n", recon_status_string(st),
                recon_model_last_error(model));
        recon_free(model);
        return 1;
    }

    /* Read the outputs, then export. */
    recon_gaussians g = {.struct_size = sizeof g};
    if (recon_result_gaussians(result, &g) == RECON_OK) printf("%zu Gaussians\n", g.count);
    recon_mesh m = {.struct_size = sizeof m};
    if (recon_result_mesh(result, &m) == RECON_OK)
        printf("mesh: %zu vertices, %zu triangles\n", m.num_vertices, m.num_faces);
    st = recon_result_export(result, RECON_EXPORT_GLB, output);
    if (st == RECON_OK) {
        printf("wrote %s\n", output);
    } else {
        fprintf(stderr, "export failed (%s): %s\n", recon_status_string(st),
                recon_result_last_error(result));
    }
    recon_result_free(result);
    recon_free(model);
    return st == RECON_OK ? 0 : 1;
}
