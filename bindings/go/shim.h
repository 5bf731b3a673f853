/* C side of the Go bindings' callbacks: recon's callbacks carry a void *user_data, Go's
 * exported trampolines take the cgo.Handle as an integer. These setters store the handle in
 * the params structs (in C memory) as user_data, so Go never holds an integer disguised as
 * a pointer. */
#ifndef RECON_GO_SHIM_H
#define RECON_GO_SHIM_H

#include <stdint.h>

#include "recon.h"

/* Sets params->log_callback to the Go log trampoline, with `handle` as its user data. */
void recon_go_set_log(recon_load_params *params, uintptr_t handle);

/* Sets params->progress_callback to the Go progress trampoline, with `handle` as its user data. */
void recon_go_set_progress(recon_run_params *params, uintptr_t handle);

#endif
