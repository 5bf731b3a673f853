/* See shim.h. The trampolines only convert user_data back to the handle and call into Go. */
#include "shim.h"

#include "_cgo_export.h"

static void log_trampoline(int32_t level, const char *message, void *user_data) {
    reconGoLog((uintptr_t)user_data, level, (char *)message);
}

static int32_t progress_trampoline(const recon_progress *progress, void *user_data) {
    if (progress == NULL) return 1;
    return reconGoProgress((uintptr_t)user_data, progress->stage, progress->step,
                           progress->total);
}

void recon_go_set_log(recon_load_params *params, uintptr_t handle) {
    params->log_callback = log_trampoline;
    params->log_user_data = (void *)handle;
}

void recon_go_set_progress(recon_run_params *params, uintptr_t handle) {
    params->progress_callback = progress_trampoline;
    params->progress_user_data = (void *)handle;
}
