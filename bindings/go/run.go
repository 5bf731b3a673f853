package recon

/*
#include <stdlib.h>
#include <string.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"image"
	"image/draw"
	"runtime"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// ImageFormat is how an Image's bytes are laid out.
type ImageFormat int32

const (
	// ImageEncoded is a PNG, JPEG or WebP file's bytes.
	ImageEncoded ImageFormat = C.RECON_IMAGE_ENCODED
	// ImageRGB8 is raw 8-bit RGB pixels.
	ImageRGB8 ImageFormat = C.RECON_IMAGE_RGB8
	// ImageRGBA8 is raw 8-bit RGBA pixels with straight (not premultiplied) alpha.
	ImageRGBA8 ImageFormat = C.RECON_IMAGE_RGBA8
)

// Image is one input view. For raw pixels, Stride is the number of bytes from one row to the
// next (0: tightly packed). The library reads Data only during Run.
type Image struct {
	Format        ImageFormat
	Data          []byte
	Width, Height int
	Stride        int
}

// EncodedImage is a PNG, JPEG or WebP file's bytes.
func EncodedImage(data []byte) Image { return Image{Format: ImageEncoded, Data: data} }

// RGBImage is raw RGB pixels, rows stride bytes apart (0: 3*width).
func RGBImage(pixels []byte, width, height, stride int) Image {
	return Image{Format: ImageRGB8, Data: pixels, Width: width, Height: height, Stride: stride}
}

// RGBAImage is raw RGBA pixels (straight alpha), rows stride bytes apart (0: 4*width).
func RGBAImage(pixels []byte, width, height, stride int) Image {
	return Image{Format: ImageRGBA8, Data: pixels, Width: width, Height: height, Stride: stride}
}

// FromImage converts a decoded Go image to raw RGBA pixels. An *image.NRGBA (what image/png
// decodes an RGBA PNG to) is used as it is, without a copy; other images are converted.
func FromImage(img image.Image) Image {
	nrgba, ok := img.(*image.NRGBA)
	if !ok {
		b := img.Bounds()
		nrgba = image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
		draw.Draw(nrgba, nrgba.Rect, img, b.Min, draw.Src)
	}
	w, h := nrgba.Rect.Dx(), nrgba.Rect.Dy()
	var pix []byte
	if w > 0 && h > 0 {
		// A sub-image's Pix starts at its first pixel and may run past its last row.
		start := nrgba.PixOffset(nrgba.Rect.Min.X, nrgba.Rect.Min.Y)
		pix = nrgba.Pix[start : start+(h-1)*nrgba.Stride+4*w]
	}
	return RGBAImage(pix, w, h, nrgba.Stride)
}

// Format is a bit mask of the outputs a run produces.
type Format uint32

const (
	FormatGaussians     Format = C.RECON_FORMAT_GAUSSIANS
	FormatMesh          Format = C.RECON_FORMAT_MESH
	FormatRadianceField Format = C.RECON_FORMAT_RADIANCE_FIELD
)

// MultiImageMode is how several views of one object are combined.
type MultiImageMode int32

const (
	MultiImageStochastic     MultiImageMode = C.RECON_MULTI_IMAGE_STOCHASTIC
	MultiImageMultidiffusion MultiImageMode = C.RECON_MULTI_IMAGE_MULTIDIFFUSION
)

// DefaultCFGStrength keeps pipeline.json's guidance strength.
const DefaultCFGStrength float32 = C.RECON_DEFAULT_CFG_STRENGTH

// Stage is a pipeline stage reported to RunParams.Progress, in the order they run.
type Stage int32

const (
	StagePreprocess       Stage = C.RECON_STAGE_PREPROCESS
	StageCondition        Stage = C.RECON_STAGE_CONDITION
	StageSparseStructure  Stage = C.RECON_STAGE_SPARSE_STRUCTURE
	StageStructuredLatent Stage = C.RECON_STAGE_STRUCTURED_LATENT
	StageDecode           Stage = C.RECON_STAGE_DECODE
	StageExport           Stage = C.RECON_STAGE_EXPORT
)

func (s Stage) String() string {
	switch s {
	case StagePreprocess:
		return "preprocess"
	case StageCondition:
		return "condition"
	case StageSparseStructure:
		return "sparse structure"
	case StageStructuredLatent:
		return "structured latent"
	case StageDecode:
		return "decode"
	case StageExport:
		return "export"
	}
	return fmt.Sprintf("Stage(%d)", int32(s))
}

// Progress is one progress report: Step of Total steps done in Stage.
type Progress struct {
	Stage       Stage
	Step, Total int
}

// RunParams are a run's settings. Start from DefaultRunParams: the zero value is not the
// defaults (Formats 0 is refused; Seed 0 and guidance 0 are valid settings).
type RunParams struct {
	Seed uint64
	// Sampler steps; 0 keeps pipeline.json's.
	SparseStructureSteps uint32
	SLatSteps            uint32
	// Classifier-free guidance, 0..100; DefaultCFGStrength keeps pipeline.json's.
	SparseStructureCFGStrength float32
	SLatCFGStrength            float32
	// Formats are the outputs to produce.
	Formats Format
	// MultiImageMode combines two or more views.
	MultiImageMode MultiImageMode
	// Preprocess crops and resizes the inputs as the reference does.
	Preprocess bool
	// Progress, when set, receives progress reports on the goroutine running Run; returning
	// false stops the run (Run then fails with ErrCancelled). A panic in it stops the run and
	// is re-raised when Run returns.
	Progress func(Progress) bool
}

// DefaultRunParams returns the library's defaults (recon_run_params_init): seed 42,
// pipeline.json's steps and guidance, Gaussians and mesh, preprocessing on.
func DefaultRunParams() RunParams {
	var c C.recon_run_params
	C.recon_run_params_init(&c)
	return RunParams{
		Seed:                       uint64(c.seed),
		SparseStructureSteps:       uint32(c.sparse_structure_steps),
		SLatSteps:                  uint32(c.slat_steps),
		SparseStructureCFGStrength: float32(c.sparse_structure_cfg_strength),
		SLatCFGStrength:            float32(c.slat_cfg_strength),
		Formats:                    Format(c.formats),
		MultiImageMode:             MultiImageMode(c.multi_image_mode),
		Preprocess:                 c.preprocess != 0,
	}
}

func (p *RunParams) fill(c *C.recon_run_params) {
	C.recon_run_params_init(c)
	c.seed = C.uint64_t(p.Seed)
	c.sparse_structure_steps = C.uint32_t(p.SparseStructureSteps)
	c.slat_steps = C.uint32_t(p.SLatSteps)
	c.sparse_structure_cfg_strength = C.float(p.SparseStructureCFGStrength)
	c.slat_cfg_strength = C.float(p.SLatCFGStrength)
	c.formats = C.uint32_t(p.Formats)
	c.multi_image_mode = C.int32_t(p.MultiImageMode)
	c.preprocess = 0
	if p.Preprocess {
		c.preprocess = 1
	}
}

// cImages copies images into C memory: the recon_image array and each image's bytes. Go memory
// may not be handed to C inside a struct that holds pointers, and this package targets Go 1.19,
// which has no runtime.Pinner; a copy is small next to a run. free releases everything.
func cImages(images []Image) (array *C.recon_image, free func()) {
	if len(images) == 0 {
		return nil, func() {}
	}
	array = (*C.recon_image)(C.calloc(C.size_t(len(images)), C.sizeof_recon_image))
	views := unsafe.Slice(array, len(images))
	for i, img := range images {
		v := &views[i]
		C.recon_image_init(v)
		v.format = C.int32_t(img.Format)
		if len(img.Data) > 0 {
			v.data = (*C.uint8_t)(C.CBytes(img.Data))
			v.size = C.size_t(len(img.Data))
		}
		v.width = C.uint32_t(img.Width)
		v.height = C.uint32_t(img.Height)
		v.stride = C.size_t(img.Stride)
	}
	return array, func() {
		for i := range views {
			C.free(unsafe.Pointer(views[i].data))
		}
		C.free(unsafe.Pointer(array))
	}
}

// contextError is a run stopped by its context before the library saw it.
func contextError(ctx context.Context, what string) error {
	return &Error{Op: "run", Status: StatusCancelled, Message: what, cause: ctx.Err()}
}

// Run generates a 3D asset from one or more views of one object.
//
// When ctx ends during the run, Run asks the library to stop (recon_cancel); the run stops at
// its next step and Run returns an error matching both ErrCancelled and ctx.Err(). The model
// stays usable. Runs on one model take turns; a Run waiting for its turn gives up when ctx ends.
func (m *Model) Run(ctx context.Context, images []Image, params RunParams) (*Result, error) {
	result, panics, err := m.run(ctx, images, params)
	for _, p := range panics {
		p.rethrow()
	}
	return result, err
}

func (m *Model) run(ctx context.Context, images []Image, params RunParams) (*Result, []*panicTrap, error) {
	if ctx.Err() != nil {
		return nil, nil, contextError(ctx, "context ended before the run started")
	}
	select {
	case m.runs <- struct{}{}:
		defer func() { <-m.runs }()
	case <-ctx.Done():
		return nil, nil, contextError(ctx, "context ended while waiting for another run")
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	model := m.ptr
	if model == nil {
		return nil, nil, ErrClosed
	}

	views, freeViews := cImages(images)
	defer freeViews()
	cParams := (*C.recon_run_params)(C.calloc(1, C.sizeof_recon_run_params))
	defer C.free(unsafe.Pointer(cParams))
	params.fill(cParams)
	progress := &progressState{ctx: ctx, fn: params.Progress}
	handle := cgo.NewHandle(progress)
	defer handle.Delete()
	C.recon_go_set_progress(cParams, C.uintptr_t(handle))

	// The watcher cancels this run when ctx ends; it has exited before the turn passes on, so
	// its recon_cancel never reaches another run.
	finished := make(chan struct{})
	var watcher sync.WaitGroup
	if ctx.Done() != nil {
		watcher.Add(1)
		go func() {
			defer watcher.Done()
			select {
			case <-ctx.Done():
				C.recon_cancel(model)
			case <-finished:
			}
		}()
	}
	var out *C.recon_result
	st := C.recon_run(model, views, C.size_t(len(images)), cParams, &out)
	close(finished)
	watcher.Wait()
	panics := []*panicTrap{&progress.panicTrap}
	if m.logs != nil {
		panics = append(panics, &m.logs.panicTrap)
	}
	if Status(st) != StatusOK {
		e := &Error{Op: "run", Status: Status(st), Message: C.GoString(C.recon_model_last_error(model))}
		if e.Status == StatusCancelled {
			e.cause = ctx.Err()
		}
		return nil, panics, e
	}
	runtime.KeepAlive(m)
	return newResult(out), panics, nil
}
