/* Concurrency stress test of the C ABI: one model shared by several threads.
 *
 *   test_threads MODEL_DIR [SECONDS [THREADS]]
 *
 * Runner threads call recon_run on the shared model (1 or 2 sampler steps, Gaussians only, one
 * run early on with a mesh too), some of them cancelled by their own progress callback; the other
 * threads (chaos) call recon_cancel at random moments, read and export the results the runners
 * publish, free them, and read recon_model_last_error. It checks what include/recon.h's
 * THREADING section promises:
 *   - every run returns RECON_OK or RECON_ERR_CANCELLED, nothing else;
 *   - an OK run writes a valid result (counts > 0, finite values, unit quaternions, opacities
 *     in 0..1, mesh indices in range); a cancelled run writes nothing to *out_result;
 *   - runs on one model are serialised: no run's progress reports interleave with another's;
 *   - a result may be read from any thread (readers hold a read lock; the free a write lock,
 *     since a result must not be freed while another thread reads it);
 *   - after all of that the model still works: a final uncancelled run succeeds.
 * New runs stop after SECONDS (default 12); the runs still queued on the model's lock are then
 * cancelled, so the test ends soon after. Prints "N passed, N failed" last.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "recon.h"

/* ---------------------------------------------------------------------------------------------
 * Thread-safe assertions: each CHECK counts one check; a failure prints where and goes on.
 */

static atomic_int g_passed;
static atomic_int g_failed;

static void check_impl(int ok, const char *what, const char *detail, int line) {
    if (ok) {
        atomic_fetch_add(&g_passed, 1);
    } else {
        atomic_fetch_add(&g_failed, 1);
        fprintf(stderr, "FAIL test_threads.c:%d: %s%s%s\n", line, what, detail ? " -- " : "",
                detail ? detail : "");
    }
}

#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, NULL, __LINE__)
#define CHECK_MSG(cond, msg) check_impl((cond) ? 1 : 0, #cond, (msg), __LINE__)

/* ---------------------------------------------------------------------------------------------
 * Shared state.
 */

#define MAX_THREADS 64
#define RUNNERS_MIN 2
#define POOL 4             /* published results the chaos threads read, export and free */
#define MESH_RUNS_MAX 1    /* mesh extraction at 256^3 costs seconds on a CPU: one in the storm */
#define CUTOUT_SIDE 64

static recon_model *g_model;
static atomic_int g_stop;          /* no new runs once set */
static double g_mesh_until;        /* no mesh runs start after this time */
static atomic_int g_runners_done;  /* runner threads finished */
static unsigned char g_cutout[CUTOUT_SIDE * CUTOUT_SIDE * 4];
static char g_tmp[256];

/* The result pool: slot i holds NULL or a result; readers take the read lock, the free the
 * write lock (the header: a result must not be freed while another thread reads it). */
static struct {
    pthread_rwlock_t lock;
    recon_result *result;
    int has_mesh;
} g_pool[POOL];

/* Counters for the summary. */
static atomic_int g_runs_ok, g_runs_cancelled, g_runs_cancelled_by_callback, g_runs_other;
static atomic_int g_runs_cancelled_at_end; /* queued when new runs stopped, cancelled then */
static atomic_int g_mesh_runs_started, g_mesh_runs_ok;
static atomic_int g_cancels, g_reads, g_exports, g_frees, g_error_reads;
static _Atomic double g_ok_seconds; /* total wall time of the OK runs */

/* Serialisation check: the id of the run that made the latest progress report. A run's second
 * and later reports must find its own id there, or another run reported in between. */
static atomic_long g_last_reporter;
static atomic_int g_in_callback;
static atomic_int g_overlaps;
static atomic_long g_next_run_id;

/* ---------------------------------------------------------------------------------------------
 * Helpers.
 */

static uint64_t next_random(uint64_t *state) { /* xorshift64* */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void make_cutout(void) { /* a shaded disc on a transparent background */
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

static recon_image cutout_view(void) {
    recon_image v;
    recon_image_init(&v);
    v.format = RECON_IMAGE_RGBA8;
    v.data = g_cutout;
    v.size = sizeof g_cutout;
    v.width = CUTOUT_SIDE;
    v.height = CUTOUT_SIDE;
    return v;
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* Checks the Gaussians of a result; returns their count (0 when invalid). */
static size_t check_gaussians(const recon_result *result) {
    recon_gaussians g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    if (recon_result_gaussians(result, &g) != RECON_OK) {
        CHECK_MSG(0, recon_result_last_error(result));
        return 0;
    }
    int ok = g.count > 0 && g.xyz && g.features_dc && g.scaling && g.rotation && g.opacity;
    CHECK(ok);
    if (!ok) return 0;
    CHECK(all_finite(g.xyz, 3 * g.count) && all_finite(g.features_dc, 3 * g.count) &&
          all_finite(g.scaling, 3 * g.count) && all_finite(g.rotation, 4 * g.count) &&
          all_finite(g.opacity, g.count));
    int bad = 0;
    for (size_t i = 0; i < g.count; i++) {
        const float *q = g.rotation + 4 * i;
        double n2 = (double)q[0] * q[0] + (double)q[1] * q[1] + (double)q[2] * q[2] +
                    (double)q[3] * q[3];
        if (fabs(n2 - 1.0) > 1e-3 || !(g.opacity[i] >= 0.0f && g.opacity[i] <= 1.0f)) bad++;
    }
    CHECK(bad == 0);
    return g.count;
}

static void check_mesh(const recon_result *result) {
    recon_mesh m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    if (recon_result_mesh(result, &m) != RECON_OK) {
        CHECK_MSG(0, recon_result_last_error(result));
        return;
    }
    CHECK(m.num_vertices > 0 && m.num_faces > 0 && m.positions && m.indices);
    if (!m.positions || !m.indices) return;
    CHECK(all_finite(m.positions, 3 * m.num_vertices));
    size_t out_of_range = 0;
    for (size_t i = 0; i < 3 * m.num_faces; i++)
        if (m.indices[i] >= m.num_vertices) out_of_range++;
    CHECK(out_of_range == 0);
}

/* ---------------------------------------------------------------------------------------------
 * Runs.
 */

typedef struct {
    long run_id;
    int reports;
    int32_t last_stage;
    int cancel_after; /* stop (return 0) after this many reports; -1: never */
    int stopped;
    double started; /* time of the first report: the run holds the model from then on */
} run_context;

static int32_t on_progress(const recon_progress *p, void *user_data) {
    run_context *ctx = user_data;
    if (atomic_fetch_add(&g_in_callback, 1) != 0) atomic_fetch_add(&g_overlaps, 1);
    long previous = atomic_exchange(&g_last_reporter, ctx->run_id);
    if (ctx->reports > 0 && previous != ctx->run_id) atomic_fetch_add(&g_overlaps, 1);
    CHECK(p->struct_size == sizeof(recon_progress));
    CHECK(p->stage >= ctx->last_stage && p->stage >= RECON_STAGE_PREPROCESS &&
          p->stage <= RECON_STAGE_DECODE && p->step <= p->total);
    ctx->last_stage = p->stage;
    if (ctx->reports++ == 0) ctx->started = now_seconds();
    int go_on = !(ctx->cancel_after >= 0 && ctx->reports > ctx->cancel_after);
    if (!go_on) ctx->stopped = 1;
    atomic_fetch_sub(&g_in_callback, 1);
    return go_on ? 1 : 0;
}

/* Puts `result` in a random pool slot, freeing what was there. */
static void publish(recon_result *result, int has_mesh, uint64_t *rng) {
    int slot = (int)(next_random(rng) % POOL);
    pthread_rwlock_wrlock(&g_pool[slot].lock);
    recon_result *old = g_pool[slot].result;
    g_pool[slot].result = result;
    g_pool[slot].has_mesh = has_mesh;
    pthread_rwlock_unlock(&g_pool[slot].lock);
    recon_result_free(old);
}

/* One run with random parameters; returns its status. `mesh` adds RECON_FORMAT_MESH. */
static recon_status one_run(uint64_t *rng, int mesh, int may_stop_itself, int publish_it) {
    static char sentinel;
    recon_image view = cutout_view();
    run_context ctx = {atomic_fetch_add(&g_next_run_id, 1) + 1, 0, 0, -1, 0, 0.0};
    if (may_stop_itself && next_random(rng) % 6 == 0)
        ctx.cancel_after = (int)(next_random(rng) % 9); /* some runs stop themselves */
    recon_run_params rp;
    recon_run_params_init(&rp);
    rp.seed = next_random(rng) % 1000;
    rp.sparse_structure_steps = 1 + (uint32_t)(next_random(rng) % 2);
    rp.slat_steps = 1 + (uint32_t)(next_random(rng) % 2);
    rp.formats = RECON_FORMAT_GAUSSIANS | (mesh ? RECON_FORMAT_MESH : 0u);
    rp.progress_callback = on_progress;
    rp.progress_user_data = &ctx;
    recon_result *result = (recon_result *)&sentinel;
    recon_status st = recon_run(g_model, &view, 1, &rp, &result);
    if (st == RECON_OK) {
        atomic_fetch_add(&g_runs_ok, 1);
        double expected = atomic_load(&g_ok_seconds);
        while (!atomic_compare_exchange_weak(&g_ok_seconds, &expected,
                                             expected + now_seconds() - ctx.started)) {
        }
        CHECK(result != NULL && result != (recon_result *)&sentinel);
        CHECK(!ctx.stopped);
        if (result == NULL || result == (recon_result *)&sentinel) return st;
        check_gaussians(result);
        if (mesh) {
            atomic_fetch_add(&g_mesh_runs_ok, 1);
            check_mesh(result);
        }
        if (publish_it)
            publish(result, mesh, rng);
        else
            recon_result_free(result);
    } else if (st == RECON_ERR_CANCELLED) {
        atomic_fetch_add(&g_runs_cancelled, 1);
        if (ctx.stopped) atomic_fetch_add(&g_runs_cancelled_by_callback, 1);
        if (atomic_load(&g_stop)) atomic_fetch_add(&g_runs_cancelled_at_end, 1);
        CHECK(result == (recon_result *)&sentinel); /* a cancelled run writes no result */
        /* Every failure on this model is a cancellation, so the latest message is one. */
        const char *message = recon_model_last_error(g_model);
        CHECK_MSG(strstr(message, "cancel") != NULL, message);
    } else {
        atomic_fetch_add(&g_runs_other, 1);
        char detail[600];
        snprintf(detail, sizeof detail, "recon_run returned %d (%s): %s", (int)st,
                 recon_status_string(st), recon_model_last_error(g_model));
        CHECK_MSG(0, detail);
        CHECK(result == (recon_result *)&sentinel);
    }
    return st;
}

typedef struct {
    int index; /* among the threads of its role */
    uint64_t rng;
} thread_arg;

#define CANCELLERS 1 /* chaos threads that call recon_cancel at random moments */

static void *runner_thread(void *p) {
    thread_arg *arg = p;
    while (!atomic_load(&g_stop)) {
        int mesh = 0;
        /* A mesh costs seconds and cannot be cancelled inside its extraction: only early on. */
        if (now_seconds() < g_mesh_until && next_random(&arg->rng) % 3 == 0 &&
            atomic_fetch_add(&g_mesh_runs_started, 1) < MESH_RUNS_MAX)
            mesh = 1;
        one_run(&arg->rng, mesh, 1, 1);
        sleep_ms((long)(next_random(&arg->rng) % 50));
    }
    atomic_fetch_add(&g_runners_done, 1);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Chaos: cancels, reads, exports, frees, error reads.
 */

static void read_slot(int slot, uint64_t *rng, int thread_index) {
    pthread_rwlock_rdlock(&g_pool[slot].lock);
    const recon_result *result = g_pool[slot].result;
    if (result) {
        atomic_fetch_add(&g_reads, 1);
        size_t count = check_gaussians(result);
        recon_buffer *buffer = NULL;
        int format = next_random(rng) % 2 ? RECON_EXPORT_PLY_GAUSSIANS : RECON_EXPORT_GLB;
        recon_status st = recon_result_export_buffer(result, format, &buffer);
        if (format == RECON_EXPORT_GLB && !g_pool[slot].has_mesh) {
            /* An error path on a shared result: no mesh, so no GLB, and nothing written. */
            char copy[512];
            snprintf(copy, sizeof copy, "%s", recon_result_last_error(result));
            CHECK(st == RECON_ERR_INVALID_ARGUMENT && buffer == NULL);
            CHECK_MSG(strstr(copy, "no mesh") != NULL, copy);
        } else {
            CHECK_MSG(st == RECON_OK && buffer != NULL, recon_result_last_error(result));
        }
        if (st == RECON_OK) {
            atomic_fetch_add(&g_exports, 1);
            const uint8_t *bytes = recon_buffer_data(buffer);
            size_t size = recon_buffer_size(buffer);
            if (format == RECON_EXPORT_PLY_GAUSSIANS)
                CHECK(size > 4 && memcmp(bytes, "ply\n", 4) == 0 && count > 0);
            else
                CHECK(size > 12 && memcmp(bytes, "glTF", 4) == 0);
            recon_buffer_free(buffer);
        }
        if (next_random(rng) % 4 == 0) { /* and to a file, once in a while */
            char path[400];
            snprintf(path, sizeof path, "%s/t%d_%d.ply", g_tmp, thread_index, slot);
            st = recon_result_export(result, RECON_EXPORT_PLY_GAUSSIANS, path);
            CHECK_MSG(st == RECON_OK && access(path, F_OK) == 0, recon_result_last_error(result));
            unlink(path);
            atomic_fetch_add(&g_exports, 1);
        }
    }
    pthread_rwlock_unlock(&g_pool[slot].lock);
}

static void free_slot(int slot) {
    pthread_rwlock_wrlock(&g_pool[slot].lock);
    recon_result *result = g_pool[slot].result;
    g_pool[slot].result = NULL;
    pthread_rwlock_unlock(&g_pool[slot].lock);
    if (result) atomic_fetch_add(&g_frees, 1);
    recon_result_free(result);
}

static void *chaos_thread(void *p) {
    thread_arg *arg = p;
    /* One chaos thread cancels, every 1 to 7 s, once a first run has finished (so that the
     * readers always get a result to share): most runs take 1 to 3 s, so many finish. */
    int canceller = arg->index < CANCELLERS;
    double next_cancel = now_seconds() + 0.5 + (double)(next_random(&arg->rng) % 3000) / 1000.0;
    while (atomic_load(&g_runners_done) < RUNNERS_MIN) {
        uint64_t dice = next_random(&arg->rng) % 10;
        if (canceller && atomic_load(&g_runs_ok) > 0 && now_seconds() >= next_cancel) {
            recon_cancel(g_model); /* whatever run is in progress, at a random moment */
            atomic_fetch_add(&g_cancels, 1);
            next_cancel = now_seconds() + 1.0 + (double)(next_random(&arg->rng) % 6000) / 1000.0;
        } else if (dice < 6) {
            read_slot((int)(next_random(&arg->rng) % POOL), &arg->rng, arg->index);
        } else if (dice < 7) {
            free_slot((int)(next_random(&arg->rng) % POOL));
        } else {
            /* Copied at once: the pointer stays valid for 16 more failures on the model. */
            char copy[512];
            snprintf(copy, sizeof copy, "%s", recon_model_last_error(g_model));
            CHECK(copy[0] == '\0' || strstr(copy, "cancel") != NULL);
            CHECK(strcmp(recon_model_pipeline_name(g_model), "TrellisImageTo3DPipeline") == 0);
            CHECK(recon_model_num_networks(g_model) > 0);
            atomic_fetch_add(&g_error_reads, 1);
        }
        sleep_ms(5 + (long)(next_random(&arg->rng) % 40));
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Main.
 */

int main(int argc, char **argv) {
    const char *model_dir = argc > 1 ? argv[1] : getenv("MODEL_DIR");
    double seconds = argc > 2 ? atof(argv[2]) : 12.0;
    int threads = argc > 3 ? atoi(argv[3]) : 8;
    if (!model_dir || !*model_dir || seconds <= 0 || threads < RUNNERS_MIN + 1 ||
        threads > MAX_THREADS) {
        fprintf(stderr, "usage: %s MODEL_DIR [SECONDS>0 [THREADS %d..%d]]\n", argv[0],
                RUNNERS_MIN + 1, MAX_THREADS);
        return 2;
    }
    const char *tmpdir = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/recon_test_threads.XXXXXX",
             tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 2;
    }
    make_cutout();
    for (int i = 0; i < POOL; i++) pthread_rwlock_init(&g_pool[i].lock, NULL);

    recon_load_params lp;
    recon_load_params_init(&lp);
    lp.model = model_dir;
    lp.device = RECON_DEVICE_CPU;
    lp.offline = 1;
    char err[1024];
    if (recon_load(&lp, &g_model, err, sizeof err) != RECON_OK) {
        fprintf(stderr, "FAIL: cannot load %s: %s\n", model_dir, err);
        printf("0 passed, 1 failed\n");
        return 1;
    }

    /* Half the threads run; the others cancel, read, export and free. */
    int runners = threads / 2 < RUNNERS_MIN ? RUNNERS_MIN : threads / 2;
    pthread_t tids[MAX_THREADS];
    thread_arg args[MAX_THREADS];
    double start = now_seconds();
    g_mesh_until = start + seconds / 3;
    for (int i = 0; i < threads; i++) {
        args[i].index = i < runners ? i : i - runners;
        args[i].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
        CHECK(pthread_create(&tids[i], NULL, i < runners ? runner_thread : chaos_thread,
                             &args[i]) == 0);
    }
    while (now_seconds() - start < seconds) sleep_ms(50);
    atomic_store(&g_stop, 1);
    /* Runs queued on the model's lock would each still take seconds: cancel them as they
     * start (each run clears the request when it starts, so keep asking). */
    while (atomic_load(&g_runners_done) < runners) {
        recon_cancel(g_model);
        sleep_ms(2);
    }
    double storm = now_seconds() - start;
    for (int i = 0; i < threads; i++) CHECK(pthread_join(tids[i], NULL) == 0);
    for (int i = 0; i < POOL; i++) free_slot(i);

    CHECK(atomic_load(&g_overlaps) == 0);
    CHECK(atomic_load(&g_runs_other) == 0);
    int storm_ok = atomic_load(&g_runs_ok), storm_mesh_ok = atomic_load(&g_mesh_runs_ok);
    double storm_ok_seconds = atomic_load(&g_ok_seconds);

    /* The model is still usable: an uncancelled run (Gaussians only: test_abi checks a full
     * run's mesh and exports serially; a mesh at 256^3 takes 10 to 50 s on a loaded CPU). */
    uint64_t rng = 12345;
    double t0 = now_seconds();
    recon_status final = one_run(&rng, 0, 0, 0);
    CHECK_MSG(final == RECON_OK, recon_model_last_error(g_model));
    double final_seconds = now_seconds() - t0;

    recon_free(g_model);
    for (int i = 0; i < POOL; i++) pthread_rwlock_destroy(&g_pool[i].lock);
    rmdir(g_tmp);

    printf("threads: %d (%d runners) for %.1f s: %d runs OK (%d with a mesh; %.2f s each), "
           "%d cancelled (%d by their progress callback, %d queued at the end), %d other; "
           "%d cancels sent, %d result reads, %d exports, %d frees, %d error reads; "
           "%d overlapping runs; final run %s in %.1f s\n",
           threads, runners, storm, storm_ok, storm_mesh_ok,
           storm_ok > 0 ? storm_ok_seconds / storm_ok : 0.0,
           atomic_load(&g_runs_cancelled), atomic_load(&g_runs_cancelled_by_callback),
           atomic_load(&g_runs_cancelled_at_end),
           atomic_load(&g_runs_other), atomic_load(&g_cancels), atomic_load(&g_reads),
           atomic_load(&g_exports), atomic_load(&g_frees), atomic_load(&g_error_reads),
           atomic_load(&g_overlaps), final == RECON_OK ? "OK" : "FAILED", final_seconds);
    int failed = atomic_load(&g_failed);
    printf("%d passed, %d failed\n", atomic_load(&g_passed), failed);
    return failed > 0 ? 1 : 0;
}
