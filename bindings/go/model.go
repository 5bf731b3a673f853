package recon

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"unsafe"
)

// DeviceKind says what a Device names.
type DeviceKind int

const (
	// DeviceAuto picks the first CUDA device when usable, else the CPU (the zero value).
	DeviceAuto DeviceKind = iota
	// DeviceCPU runs on the CPU.
	DeviceCPU
	// DeviceCUDA runs on the CUDA device Device.Index.
	DeviceCUDA
)

// Device is where a model runs. The zero value is "auto".
type Device struct {
	Kind  DeviceKind
	Index int // CUDA device index, for DeviceCUDA
}

// CPU is the CPU device.
var CPU = Device{Kind: DeviceCPU}

// CUDA returns CUDA device index.
func CUDA(index int) Device { return Device{Kind: DeviceCUDA, Index: index} }

func (d Device) String() string {
	switch d.Kind {
	case DeviceAuto:
		return "auto"
	case DeviceCPU:
		return "cpu"
	case DeviceCUDA:
		return fmt.Sprintf("cuda:%d", d.Index)
	}
	return fmt.Sprintf("Device(%d, %d)", int(d.Kind), d.Index)
}

// cValue is recon_load_params.device for d. C encodes the CPU and "auto" as negative indices, so
// a negative CUDA index (which C would read as one of them) is refused here.
func (d Device) cValue() (C.int32_t, error) {
	switch {
	case d.Kind == DeviceAuto:
		return C.RECON_DEVICE_AUTO, nil
	case d.Kind == DeviceCPU:
		return C.RECON_DEVICE_CPU, nil
	case d.Kind == DeviceCUDA && d.Index >= 0 && d.Index <= math.MaxInt32:
		return C.int32_t(d.Index), nil
	}
	return 0, &Error{Op: "load", Status: StatusInvalidArgument,
		Message: fmt.Sprintf("device %v is not a device", d)}
}

func deviceFromC(v C.int32_t) Device {
	switch {
	case v == C.RECON_DEVICE_CPU:
		return CPU
	case v >= 0:
		return CUDA(int(v))
	}
	return Device{Kind: DeviceAuto}
}

// OfflineMode says whether Load may download from the Hugging Face Hub.
type OfflineMode int

const (
	// OfflineFromEnv lets the HF_HUB_OFFLINE environment variable decide (the zero value).
	OfflineFromEnv OfflineMode = iota
	// OfflineOnly uses only the local Hub cache.
	OfflineOnly
	// OfflineAllowDownload downloads what the cache lacks.
	OfflineAllowDownload
)

func (o OfflineMode) cValue() C.int32_t {
	switch o {
	case OfflineFromEnv:
		return C.RECON_OFFLINE_FROM_ENV
	case OfflineOnly:
		return 1
	case OfflineAllowDownload:
		return 0
	}
	return math.MinInt32 // refused by recon_load
}

// LogLevel is the severity of a log message; larger is more verbose.
type LogLevel int32

const (
	LogError LogLevel = C.RECON_LOG_ERROR
	LogWarn  LogLevel = C.RECON_LOG_WARN
	LogInfo  LogLevel = C.RECON_LOG_INFO
	LogDebug LogLevel = C.RECON_LOG_DEBUG
)

func (l LogLevel) String() string {
	switch l {
	case LogError:
		return "error"
	case LogWarn:
		return "warn"
	case LogInfo:
		return "info"
	case LogDebug:
		return "debug"
	}
	return fmt.Sprintf("LogLevel(%d)", int32(l))
}

// LoadOptions says how to load a model. Only Model is required; zero values mean the library's
// defaults.
type LoadOptions struct {
	// Model is a local directory in the published layout (pipeline.json + ckpts/) or a Hugging
	// Face repo id such as "microsoft/TRELLIS-image-large" (optionally "@revision").
	Model string
	// Device defaults to DeviceAuto.
	Device Device
	// Offline defaults to OfflineFromEnv.
	Offline OfflineMode
	// LogLevel is the most verbose level passed to Log (0: LogInfo).
	LogLevel LogLevel
	// Log receives the library's messages during Load and during each Run, one at a time (on
	// the goroutine running the call). Nil logs nothing. A panic in Log is re-raised when Load
	// or Run returns.
	Log func(level LogLevel, message string)
}

// NetworkInfo describes one network of a loaded model.
type NetworkInfo struct {
	Key         string // pipeline.json key, e.g. "sparse_structure_decoder"
	ClassName   string // upstream class, e.g. "SparseStructureDecoder"
	Stem        string // checkpoint stem, e.g. "ckpts/ss_dec_conv3d_16l8_fp16"
	NumElements uint64 // elements stored in the checkpoint
	Implemented bool   // recon runs it (false: the checkpoint was only validated)
}

// Model is a loaded pipeline. Use it from any goroutine; Close it when done.
type Model struct {
	// mu guards ptr: calls read-lock it, Close write-locks it (so Close waits for a Run).
	mu  sync.RWMutex
	ptr *C.recon_model
	// runs holds one token per Run in flight (capacity 1). recon_run serialises runs itself,
	// but recon_cancel stops whichever run is in progress on the model, so a context must only
	// cancel while its own run is the one inside recon_run.
	runs chan struct{}
	// logs is the Log callback's state (nil without Log); logHandle is the cgo.Handle the
	// library holds as log_user_data until recon_free.
	logs      *logState
	logHandle cgo.Handle
	// Immutable facts read once at load time (they stay readable after Close).
	pipeline string
	device   Device
	networks []NetworkInfo
}

// errorBufferLen is the size of recon_load's error buffer (longer messages are truncated).
const errorBufferLen = 4096

// Load loads a model. When ctx ends first, Load returns ctx.Err() at once; the library cannot
// interrupt a load, so it goes on in the background and its model is freed when it finishes.
func Load(ctx context.Context, opts LoadOptions) (*Model, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ctx.Done() == nil { // never cancelled: no need for a goroutine
		return load(opts)
	}
	type loaded struct {
		model *Model
		err   error
	}
	done := make(chan loaded, 1)
	go func() {
		m, err := load(opts)
		done <- loaded{m, err}
	}()
	select {
	case r := <-done:
		return r.model, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.model != nil {
				r.model.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func load(opts LoadOptions) (*Model, error) {
	if lib := LibraryABIVersion(); lib != ABIVersion {
		return nil, &Error{Op: "load", Status: StatusUnsupported, Message: fmt.Sprintf(
			"librecon has ABI version %d, this package was written for %d", lib, ABIVersion)}
	}
	if strings.IndexByte(opts.Model, 0) >= 0 {
		return nil, &Error{Op: "load", Status: StatusInvalidArgument,
			Message: "model contains a NUL byte"}
	}
	device, err := opts.Device.cValue()
	if err != nil {
		return nil, err
	}

	// The params live in C memory: the log user data is an integer (a cgo.Handle), which must
	// not sit in a Go pointer field.
	params := (*C.recon_load_params)(C.calloc(1, C.sizeof_recon_load_params))
	defer C.free(unsafe.Pointer(params))
	C.recon_load_params_init(params)
	cModel := C.CString(opts.Model)
	defer C.free(unsafe.Pointer(cModel))
	params.model = cModel
	params.device = device
	params.offline = opts.Offline.cValue()
	if opts.LogLevel != 0 {
		params.log_level = C.int32_t(opts.LogLevel)
	}
	m := &Model{runs: make(chan struct{}, 1)}
	if opts.Log != nil {
		m.logs = &logState{fn: opts.Log}
		m.logHandle = cgo.NewHandle(m.logs)
		C.recon_go_set_log(params, C.uintptr_t(m.logHandle))
	}

	errBuf := (*C.char)(C.calloc(1, errorBufferLen))
	defer C.free(unsafe.Pointer(errBuf))
	var out *C.recon_model
	st := C.recon_load(params, &out, errBuf, errorBufferLen)
	m.ptr = out
	if err := newError("load", st, C.GoString(errBuf)); err != nil {
		m.release()
		if m.logs != nil {
			m.logs.rethrow()
		}
		return nil, err
	}
	runtime.SetFinalizer(m, (*Model).Close)
	if err := m.describe(); err != nil {
		m.Close()
		return nil, err
	}
	if m.logs != nil && m.logs.pending() {
		m.Close()
		m.logs.rethrow()
	}
	return m, nil
}

// describe reads the model's immutable facts: pipeline name, device, networks.
func (m *Model) describe() error {
	m.pipeline = C.GoString(C.recon_model_pipeline_name(m.ptr))
	m.device = deviceFromC(C.recon_model_device(m.ptr))
	n := int(C.recon_model_num_networks(m.ptr))
	m.networks = make([]NetworkInfo, n)
	for i := range m.networks {
		var info C.recon_network_info
		info.struct_size = C.sizeof_recon_network_info
		st := C.recon_model_network(m.ptr, C.size_t(i), &info)
		if err := newError("network", st, C.GoString(C.recon_model_last_error(m.ptr))); err != nil {
			return err
		}
		m.networks[i] = NetworkInfo{
			Key:         C.GoString(info.key),
			ClassName:   C.GoString(info.class_name),
			Stem:        C.GoString(info.stem),
			NumElements: uint64(info.num_elements),
			Implemented: info.implemented != 0,
		}
	}
	return nil
}

// Close frees the model, waiting for a Run in flight to return. Results stay valid. Calling
// Close again does nothing; it always returns nil.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.release()
	runtime.SetFinalizer(m, nil)
	return nil
}

// release frees the handle and the log callback's handle (once; mu held or m unshared).
func (m *Model) release() {
	if m.ptr != nil {
		C.recon_free(m.ptr)
		m.ptr = nil
	}
	if m.logHandle != 0 {
		m.logHandle.Delete()
		m.logHandle = 0
	}
}

// Pipeline returns the pipeline's name from pipeline.json, e.g. "TrellisImageTo3DPipeline".
func (m *Model) Pipeline() string { return m.pipeline }

// Device returns the device the model runs on: CPU or CUDA(i), never DeviceAuto.
func (m *Model) Device() Device { return m.device }

// Networks describes the networks the model loaded, in the library's order.
func (m *Model) Networks() []NetworkInfo {
	return append([]NetworkInfo(nil), m.networks...)
}
