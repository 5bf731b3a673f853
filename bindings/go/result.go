package recon

/*
#include <stdlib.h>
#include "recon.h"
*/
import "C"

import (
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// ExportFormat is a file format for Result.Export and Result.ExportBytes.
type ExportFormat int32

const (
	// ExportGLB is a binary glTF 2.0 of the mesh (needs FormatMesh).
	ExportGLB ExportFormat = C.RECON_EXPORT_GLB
	// ExportPLYGaussians is the Gaussians as a 3DGS PLY (needs FormatGaussians).
	ExportPLYGaussians ExportFormat = C.RECON_EXPORT_PLY_GAUSSIANS
	// ExportPLYMesh is the mesh as a PLY (needs FormatMesh).
	ExportPLYMesh ExportFormat = C.RECON_EXPORT_PLY_MESH
	// ExportOBJ is the mesh as a Wavefront OBJ (needs FormatMesh).
	ExportOBJ ExportFormat = C.RECON_EXPORT_OBJ
	// ExportGLBWithCameras is ExportGLB plus one glTF camera node per camera of the result
	// (the plain GLB when it has none).
	ExportGLBWithCameras ExportFormat = C.RECON_EXPORT_GLB_WITH_CAMERAS
)

// Gaussians are 3D Gaussians, activated: centres, SH DC colours, positive scales, unit
// quaternions (w, x, y, z) and opacities in 0..1, one entry per Gaussian.
type Gaussians struct {
	XYZ        [][3]float32
	FeaturesDC [][3]float32
	Scaling    [][3]float32
	Rotation   [][4]float32
	Opacity    []float32
}

// Len is the number of Gaussians.
func (g *Gaussians) Len() int { return len(g.Opacity) }

// Mesh is a triangle mesh.
type Mesh struct {
	Positions [][3]float32
	// Colors are per-vertex RGB in 0..1; nil when the mesh has no vertex colours.
	Colors [][3]float32
	// Faces are triangles as indices into Positions.
	Faces [][3]uint32
}

// Camera is the camera recovered for one input view (OpenCV convention, camera-from-world).
type Camera struct {
	Width, Height int
	Extrinsic     [3][4]float32 // [R | t], row-major
	Intrinsic     [3][3]float32 // in pixels, row-major
}

// Result is the output of one Run. It is independent of its model (it may outlive it) and may
// be read from any goroutine. Close it when done.
type Result struct {
	// mu serialises calls: each fallible call and the read of its message
	// (recon_result_last_error) must not interleave with another call's, and Close must not
	// free the result under a reader.
	mu  sync.Mutex
	ptr *C.recon_result
}

func newResult(ptr *C.recon_result) *Result {
	r := &Result{ptr: ptr}
	runtime.SetFinalizer(r, (*Result).Close)
	return r
}

// Close frees the result. Slices returned earlier stay valid (they are copies). Calling Close
// again does nothing; it always returns nil.
func (r *Result) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		C.recon_result_free(r.ptr)
		r.ptr = nil
	}
	runtime.SetFinalizer(r, nil)
	return nil
}

// lock locks r and returns its handle, or ErrClosed (unlocked) after Close.
func (r *Result) lock() (*C.recon_result, error) {
	r.mu.Lock()
	if r.ptr == nil {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	return r.ptr, nil
}

// check turns a status of a call on r into an error with the result's message (r locked).
func (r *Result) check(op string, st C.recon_status) error {
	if Status(st) == StatusOK {
		return nil
	}
	return newError(op, st, C.GoString(C.recon_result_last_error(r.ptr)))
}

// copyOut copies n elements of type T from library memory into a new Go slice (nil when n is 0
// or p is NULL).
func copyOut[T any](p unsafe.Pointer, n int) []T {
	if p == nil || n == 0 {
		return nil
	}
	out := make([]T, n)
	copy(out, unsafe.Slice((*T)(p), n))
	return out
}

// Gaussians returns a copy of the result's Gaussians; ErrInvalidArgument when the run did not
// produce them.
//
// The library lends its arrays for as long as the result lives. Handing them out as Go slices
// would let them outlive Close (or the finalizer) and read freed memory, which Go's garbage
// collector cannot prevent; a copy is Go memory, safe to keep.
func (r *Result) Gaussians() (*Gaussians, error) {
	ptr, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	var g C.recon_gaussians
	g.struct_size = C.sizeof_recon_gaussians
	if err := r.check("gaussians", C.recon_result_gaussians(ptr, &g)); err != nil {
		return nil, err
	}
	n := int(g.count)
	return &Gaussians{
		XYZ:        copyOut[[3]float32](unsafe.Pointer(g.xyz), n),
		FeaturesDC: copyOut[[3]float32](unsafe.Pointer(g.features_dc), n),
		Scaling:    copyOut[[3]float32](unsafe.Pointer(g.scaling), n),
		Rotation:   copyOut[[4]float32](unsafe.Pointer(g.rotation), n),
		Opacity:    copyOut[float32](unsafe.Pointer(g.opacity), n),
	}, nil
}

// Mesh returns a copy of the result's mesh (see Gaussians for why a copy);
// ErrInvalidArgument when the run did not produce one.
func (r *Result) Mesh() (*Mesh, error) {
	ptr, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	var m C.recon_mesh
	m.struct_size = C.sizeof_recon_mesh
	if err := r.check("mesh", C.recon_result_mesh(ptr, &m)); err != nil {
		return nil, err
	}
	nv, nf := int(m.num_vertices), int(m.num_faces)
	return &Mesh{
		Positions: copyOut[[3]float32](unsafe.Pointer(m.positions), nv),
		Colors:    copyOut[[3]float32](unsafe.Pointer(m.colors), nv),
		Faces:     copyOut[[3]uint32](unsafe.Pointer(m.indices), nf),
	}, nil
}

// Cameras returns the cameras recovered for the input views: one per view when the pipeline
// estimates poses, none otherwise.
func (r *Result) Cameras() ([]Camera, error) {
	ptr, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	cameras := make([]Camera, int(C.recon_result_num_cameras(ptr)))
	for i := range cameras {
		if cameras[i], err = r.camera(ptr, i); err != nil {
			return nil, err
		}
	}
	return cameras, nil
}

// Camera returns the camera of input view index; ErrInvalidArgument when out of range.
func (r *Result) Camera(index int) (Camera, error) {
	ptr, err := r.lock()
	if err != nil {
		return Camera{}, err
	}
	defer r.mu.Unlock()
	return r.camera(ptr, index)
}

// CameraMatrices returns the camera of input view index as row-major matrices: the 4×4
// camera-from-world [R | t] over 0 0 0 1 and the 3×3 intrinsics in pixels (the conventions of
// Camera); ErrInvalidArgument when out of range.
func (r *Result) CameraMatrices(index int) (extrinsic [4][4]float32, intrinsic [3][3]float32, err error) {
	ptr, err := r.lock()
	if err != nil {
		return extrinsic, intrinsic, err
	}
	defer r.mu.Unlock()
	// A negative index wraps to a huge size_t, which the library reports as out of range.
	status := C.recon_result_camera_matrices(ptr, C.size_t(index),
		(*C.float)(unsafe.Pointer(&extrinsic[0][0])), (*C.float)(unsafe.Pointer(&intrinsic[0][0])))
	if err := r.check("camera matrices", status); err != nil {
		return [4][4]float32{}, [3][3]float32{}, err
	}
	return extrinsic, intrinsic, nil
}

func (r *Result) camera(ptr *C.recon_result, index int) (Camera, error) {
	var c C.recon_camera
	c.struct_size = C.sizeof_recon_camera
	// A negative index wraps to a huge size_t, which the library reports as out of range.
	if err := r.check("camera", C.recon_result_camera(ptr, C.size_t(index), &c)); err != nil {
		return Camera{}, err
	}
	return Camera{
		Width:     int(c.width),
		Height:    int(c.height),
		Extrinsic: *(*[3][4]float32)(unsafe.Pointer(&c.extrinsic)),
		Intrinsic: *(*[3][3]float32)(unsafe.Pointer(&c.intrinsic)),
	}, nil
}

// Export writes the result to the file path in format. The file appears whole or not at all.
func (r *Result) Export(format ExportFormat, path string) error {
	if strings.IndexByte(path, 0) >= 0 {
		return &Error{Op: "export", Status: StatusInvalidArgument, Message: "path contains a NUL byte"}
	}
	ptr, err := r.lock()
	if err != nil {
		return err
	}
	defer r.mu.Unlock()
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	return r.check("export", C.recon_result_export(ptr, C.int32_t(format), cPath))
}

// ExportBytes returns the file Export would write, in memory.
func (r *Result) ExportBytes(format ExportFormat) ([]byte, error) {
	ptr, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer r.mu.Unlock()
	var buf *C.recon_buffer
	if err := r.check("export", C.recon_result_export_buffer(ptr, C.int32_t(format), &buf)); err != nil {
		return nil, err
	}
	defer C.recon_buffer_free(buf)
	bytes := copyOut[byte](unsafe.Pointer(C.recon_buffer_data(buf)), int(C.recon_buffer_size(buf)))
	if bytes == nil {
		bytes = []byte{}
	}
	return bytes, nil
}
