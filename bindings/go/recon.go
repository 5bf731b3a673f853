// Package recon is the Go binding of recon, a native image-to-3D reconstruction library
// (TRELLIS), through its C ABI (include/recon.h, librecon.so).
//
// Load a model once, then Run it on images; a Result holds the generated Gaussians and mesh
// and exports them (GLB, PLY, OBJ):
//
//	model, err := recon.Load(ctx, recon.LoadOptions{Model: "microsoft/TRELLIS-image-large"})
//	if err != nil { ... }
//	defer model.Close()
//	params := recon.DefaultRunParams()
//	params.Seed = 1
//	result, err := model.Run(ctx, []recon.Image{recon.EncodedImage(png)}, params)
//	if err != nil { ... }
//	defer result.Close()
//	err = result.Export(recon.ExportGLB, "asset.glb")
//
// The binding only marshals: every behaviour (validation, defaults, the pipeline) lives in the
// library, and failures come back as *Error values carrying the library's status and message.
//
// Threading: a Model may be used from any goroutine; its runs are serialised (a second Run
// waits, or gives up when its context ends). A Result may be read from any goroutine and
// outlives its Model. Callbacks (LoadOptions.Log, RunParams.Progress) run on the goroutine
// that called Load or Run.
//
// Handles are freed by Close; a finalizer frees what was never closed, but resources held by
// libtorch are large, so close models and results explicitly.
package recon

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lrecon
#include <stdlib.h>
#include "recon.h"
*/
import "C"

import (
	"errors"
	"fmt"
)

// ABIVersion is the version of include/recon.h this package was written against. Load refuses a
// library whose recon_abi_version differs.
const ABIVersion = C.RECON_ABI_VERSION

// LibraryABIVersion returns the ABI version of the loaded librecon (recon_abi_version).
func LibraryABIVersion() uint32 { return uint32(C.recon_abi_version()) }

// Version returns the library's version, e.g. "0.1.0" (recon_version_string).
func Version() string { return C.GoString(C.recon_version_string()) }

// CUDADeviceCount returns the number of CUDA devices libtorch can use; 0 without a GPU or a
// CUDA build (recon_cuda_device_count).
func CUDADeviceCount() int { return int(C.recon_cuda_device_count()) }

// Status is the outcome of a library call (recon_status). The numbers are stable.
type Status int32

// The statuses of include/recon.h.
const (
	StatusOK              Status = C.RECON_OK
	StatusInvalidArgument Status = C.RECON_ERR_INVALID_ARGUMENT
	StatusIO              Status = C.RECON_ERR_IO
	StatusNetwork         Status = C.RECON_ERR_NETWORK
	StatusFormat          Status = C.RECON_ERR_FORMAT
	StatusCheckpoint      Status = C.RECON_ERR_CHECKPOINT
	StatusUnsupported     Status = C.RECON_ERR_UNSUPPORTED
	StatusCancelled       Status = C.RECON_ERR_CANCELLED
	StatusOutOfMemory     Status = C.RECON_ERR_OUT_OF_MEMORY
	StatusDevice          Status = C.RECON_ERR_DEVICE
	StatusInternal        Status = C.RECON_ERR_INTERNAL
)

// String returns the library's short English description ("invalid argument", ...;
// recon_status_string).
func (s Status) String() string { return C.GoString(C.recon_status_string(C.int32_t(s))) }

// Error is a failed library call: its status and the library's message (recon_load's error
// buffer, recon_model_last_error or recon_result_last_error). Compare with errors.Is against
// the Err* sentinels, which match any Error of their status:
//
//	if errors.Is(err, recon.ErrCancelled) { ... }
//
// A run stopped because its context ended also matches the context's error
// (context.Canceled or context.DeadlineExceeded).
type Error struct {
	// Op names the call that failed, e.g. "load", "run", "export".
	Op      string
	Status  Status
	Message string
	// cause is the context error of a run that its context stopped; Unwrap returns it.
	cause error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("recon %s: %s", e.Op, e.Status)
	}
	return fmt.Sprintf("recon %s: %s: %s", e.Op, e.Status, e.Message)
}

// Is reports whether target is the sentinel of e's status (an *Error with neither Op nor
// Message), so errors.Is(err, ErrIO) matches every I/O failure.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Message == "" && t.Status == e.Status
}

// Unwrap returns the context error that stopped a run, or nil.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels for errors.Is, one per failure status.
var (
	ErrInvalidArgument error = &Error{Status: StatusInvalidArgument}
	ErrIO              error = &Error{Status: StatusIO}
	ErrNetwork         error = &Error{Status: StatusNetwork}
	ErrFormat          error = &Error{Status: StatusFormat}
	ErrCheckpoint      error = &Error{Status: StatusCheckpoint}
	ErrUnsupported     error = &Error{Status: StatusUnsupported}
	ErrCancelled       error = &Error{Status: StatusCancelled}
	ErrOutOfMemory     error = &Error{Status: StatusOutOfMemory}
	ErrDevice          error = &Error{Status: StatusDevice}
	ErrInternal        error = &Error{Status: StatusInternal}
)

// ErrClosed is returned by calls on a Model or Result after Close.
var ErrClosed = errors.New("recon: use of a closed handle")

// newError turns a failed status into an *Error; nil for StatusOK.
func newError(op string, st C.recon_status, message string) error {
	if Status(st) == StatusOK {
		return nil
	}
	return &Error{Op: op, Status: Status(st), Message: message}
}
