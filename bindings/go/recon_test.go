package recon

// Tests of the Go bindings against librecon and the tiny model fixture. Every function of the
// C ABI is reached through the wrapper. The environment gives the inputs (bindings/go/Makefile
// sets them): MODEL_DIR (tests/fixtures/model_tiny) and IMAGE (an RGBA cut-out PNG).
//
// Generations use 2 + 2 sampler steps on the CPU, as bindings/c/test_abi.c does.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	genSSSteps   = 2
	genSLatSteps = 2
)

// The tiny model's networks, in the library's order (bindings/c/test_abi.c lists the same).
var tinyNetworks = []struct{ key, class, stem string }{
	{"slat_decoder_gs", "SLatGaussianDecoder", "ckpts/slat_dec_gs_swin8_tiny_fp16"},
	{"slat_decoder_mesh", "SLatMeshDecoder", "ckpts/slat_dec_mesh_swin8_tiny_fp16"},
	{"slat_decoder_rf", "SLatRadianceFieldDecoder", "ckpts/slat_dec_rf_swin8_tiny_fp16"},
	{"slat_flow_model", "SLatFlowModel", "ckpts/slat_flow_img_dit_tiny_fp16"},
	{"sparse_structure_decoder", "SparseStructureDecoder", "ckpts/ss_dec_conv3d_tiny_fp16"},
	{"sparse_structure_flow_model", "SparseStructureFlowModel", "ckpts/ss_flow_img_dit_tiny_fp16"},
	{"image_cond_model", "DinoVisionTransformer", "ckpts/dinov2_tiny"},
}

// fixture returns the path in environment variable name, or the repository's default.
func fixture(t *testing.T, name, fallback string) string {
	t.Helper()
	path := os.Getenv(name)
	if path == "" {
		path = fallback
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v (set %s)", name, err, name)
	}
	return path
}

func modelDir(t *testing.T) string {
	return fixture(t, "MODEL_DIR", "../../tests/fixtures/model_tiny")
}

func imageBytes(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(fixture(t, "IMAGE", "../../tests/fixtures/images/example.png"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The model most tests share (loading costs about a second), with its log messages.
var shared struct {
	once  sync.Once
	model *Model
	err   error
	mu    sync.Mutex
	logs  []string
}

func sharedModel(t *testing.T) *Model {
	t.Helper()
	shared.once.Do(func() {
		shared.model, shared.err = Load(context.Background(), LoadOptions{
			Model:    modelDir(t),
			Device:   CPU,
			Offline:  OfflineOnly,
			LogLevel: LogDebug,
			Log: func(level LogLevel, message string) {
				shared.mu.Lock()
				defer shared.mu.Unlock()
				shared.logs = append(shared.logs, fmt.Sprintf("%v: %s", level, message))
			},
		})
	})
	if shared.err != nil {
		t.Fatalf("loading the tiny model: %v", shared.err)
	}
	return shared.model
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.model != nil {
		shared.model.Close()
	}
	os.Exit(code)
}

// quickParams are 2 + 2 sampler steps producing `formats`.
func quickParams(formats Format) RunParams {
	p := DefaultRunParams()
	p.Seed = 1
	p.SparseStructureSteps = genSSSteps
	p.SLatSteps = genSLatSteps
	p.Formats = formats
	return p
}

// wantStatus fails unless err is an *Error of status want whose message contains needle.
func wantStatus(t *testing.T, err error, want error, needle string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want an *Error matching %v", err, err, want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want status %v", err, want.(*Error).Status)
	}
	if !strings.Contains(e.Message, needle) {
		t.Fatalf("message %q lacks %q", e.Message, needle)
	}
}

func TestVersionAndStatuses(t *testing.T) {
	if v := Version(); v == "" {
		t.Fatal("empty version")
	}
	if got := LibraryABIVersion(); got != ABIVersion {
		t.Fatalf("library ABI %d, package ABI %d", got, ABIVersion)
	}
	if n := CUDADeviceCount(); n < 0 {
		t.Fatalf("CUDADeviceCount %d", n)
	}
	t.Logf("recon %s, ABI %d, %d CUDA device(s)", Version(), LibraryABIVersion(), CUDADeviceCount())
	for st, want := range map[Status]string{
		StatusOK: "ok", StatusInvalidArgument: "invalid argument", StatusIO: "I/O error",
		StatusCancelled: "cancelled", StatusInternal: "internal error", Status(99): "unknown status",
	} {
		if got := st.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", int32(st), got, want)
		}
	}
	if StageDecode.String() != "decode" || LogWarn.String() != "warn" || CUDA(1).String() != "cuda:1" {
		t.Error("String methods")
	}
	// Sentinels match by status only; distinct statuses never match.
	err := error(&Error{Op: "run", Status: StatusIO, Message: "x"})
	if !errors.Is(err, ErrIO) || errors.Is(err, ErrFormat) || errors.Is(ErrIO, err) {
		t.Fatal("errors.Is on sentinels")
	}
}

func TestLoadErrors(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "no_such_model_dir")
	_, err := Load(ctx, LoadOptions{Model: missing, Device: CPU, Offline: OfflineOnly})
	wantStatus(t, err, ErrIO, "no_such_model_dir")
	t.Logf("missing directory: %v", err)

	empty := filepath.Join(tmp, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = Load(ctx, LoadOptions{Model: empty, Device: CPU, Offline: OfflineOnly})
	wantStatus(t, err, ErrIO, "pipeline.json")

	_, err = Load(ctx, LoadOptions{Model: "", Device: CPU})
	wantStatus(t, err, ErrInvalidArgument, "")
	_, err = Load(ctx, LoadOptions{Model: modelDir(t), Device: CPU, LogLevel: 9})
	wantStatus(t, err, ErrInvalidArgument, "log_level")
	_, err = Load(ctx, LoadOptions{Model: modelDir(t), Device: CPU, Offline: OfflineMode(5)})
	wantStatus(t, err, ErrInvalidArgument, "offline")
	_, err = Load(ctx, LoadOptions{Model: modelDir(t), Device: CUDA(-1)})
	wantStatus(t, err, ErrInvalidArgument, "cuda:-1")
	_, err = Load(ctx, LoadOptions{Model: modelDir(t), Device: CUDA(99), Offline: OfflineOnly})
	wantStatus(t, err, ErrDevice, "99")
	_, err = Load(ctx, LoadOptions{Model: "a\x00b"})
	wantStatus(t, err, ErrInvalidArgument, "NUL")

	// A Hub repo id, offline with an empty cache: a network error naming the repo.
	t.Setenv("HF_HOME", filepath.Join(tmp, "hf_home"))
	t.Setenv("HF_HUB_CACHE", filepath.Join(tmp, "hf_home", "hub"))
	_, err = Load(ctx, LoadOptions{Model: "someone/missing-repo", Device: CPU, Offline: OfflineOnly})
	wantStatus(t, err, ErrNetwork, "someone/missing-repo")

	// A context that has already ended: no load at all.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Load(done, LoadOptions{Model: modelDir(t)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Load with a cancelled context: %v", err)
	}
}

// A load that outlasts its context returns at once; the model loaded behind it is freed.
func TestLoadContextTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	start := time.Now()
	m, err := Load(ctx, LoadOptions{Model: modelDir(t), Device: CPU, Offline: OfflineOnly})
	if m != nil {
		m.Close()
	}
	if err == nil {
		t.Skip("the load finished within 1 ms")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	t.Logf("Load gave up after %v", time.Since(start))
}

func TestModelInfo(t *testing.T) {
	m := sharedModel(t)
	if got := m.Pipeline(); got != "TrellisImageTo3DPipeline" {
		t.Errorf("Pipeline() = %q", got)
	}
	if got := m.Device(); got != CPU || got.String() != "cpu" {
		t.Errorf("Device() = %v", got)
	}
	nets := m.Networks()
	if len(nets) != len(tinyNetworks) {
		t.Fatalf("%d networks, want %d", len(nets), len(tinyNetworks))
	}
	for i, n := range nets {
		want := tinyNetworks[i]
		if n.Key != want.key || n.ClassName != want.class || n.Stem != want.stem ||
			!n.Implemented || n.NumElements == 0 {
			t.Errorf("network %d = %+v, want %v", i, n, want)
		}
	}
	nets[0].Key = "changed" // a copy: the model's list stays as it was
	if m.Networks()[0].Key != tinyNetworks[0].key {
		t.Error("Networks() shares its slice")
	}
}

func TestLogCallback(t *testing.T) {
	sharedModel(t)
	shared.mu.Lock()
	n := len(shared.logs)
	first := ""
	if n > 0 {
		first = shared.logs[0]
	}
	shared.mu.Unlock()
	if n == 0 {
		t.Fatal("no log message during Load at LogDebug")
	}
	t.Logf("%d messages during load; first: %s", n, first)

	// At LogError a successful load says nothing.
	var count int
	m, err := Load(context.Background(), LoadOptions{
		Model: modelDir(t), Device: CPU, Offline: OfflineOnly, LogLevel: LogError,
		Log: func(LogLevel, string) { count++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if count != 0 {
		t.Fatalf("%d messages at LogError", count)
	}
}

// A panic in the log callback comes out of Load, not out of the library's frames.
func TestLogPanic(t *testing.T) {
	defer func() {
		if r := recover(); r != "log boom" {
			t.Fatalf("recovered %v, want the callback's panic", r)
		}
	}()
	_, err := Load(context.Background(), LoadOptions{
		Model: modelDir(t), Device: CPU, Offline: OfflineOnly, LogLevel: LogDebug,
		Log: func(LogLevel, string) { panic("log boom") },
	})
	t.Fatalf("Load returned (%v) instead of panicking", err)
}

func TestRunErrors(t *testing.T) {
	m := sharedModel(t)
	ctx := context.Background()
	params := quickParams(FormatGaussians)

	_, err := m.Run(ctx, nil, params)
	wantStatus(t, err, ErrInvalidArgument, "num_images")
	_, err = m.Run(ctx, []Image{EncodedImage([]byte("not an image at all"))}, params)
	wantStatus(t, err, ErrFormat, "")
	_, err = m.Run(ctx, []Image{EncodedImage(nil)}, params)
	wantStatus(t, err, ErrInvalidArgument, "images[0]")
	_, err = m.Run(ctx, []Image{RGBImage(make([]byte, 47), 4, 4, 0)}, params)
	wantStatus(t, err, ErrInvalidArgument, "48")
	_, err = m.Run(ctx, []Image{{Format: ImageFormat(7), Data: []byte{1}}}, params)
	wantStatus(t, err, ErrInvalidArgument, "format")
	// The zero RunParams are not the defaults: no output format is refused.
	_, err = m.Run(ctx, []Image{EncodedImage(imageBytes(t))}, RunParams{})
	wantStatus(t, err, ErrInvalidArgument, "format")
	bad := params
	bad.SLatCFGStrength = float32(math.NaN())
	_, err = m.Run(ctx, []Image{EncodedImage(imageBytes(t))}, bad)
	wantStatus(t, err, ErrInvalidArgument, "cfg_strength")
}

func TestDefaultRunParams(t *testing.T) {
	p := DefaultRunParams()
	if p.Seed != 42 || p.SparseStructureSteps != 0 || p.SLatSteps != 0 ||
		p.SparseStructureCFGStrength != DefaultCFGStrength || p.SLatCFGStrength != DefaultCFGStrength ||
		p.Formats != FormatGaussians|FormatMesh || p.MultiImageMode != MultiImageStochastic ||
		!p.Preprocess || p.Progress != nil {
		t.Fatalf("DefaultRunParams() = %+v", p)
	}
}

func finite(v float32) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }

func checkGaussians(t *testing.T, g *Gaussians) {
	t.Helper()
	n := g.Len()
	if n == 0 || len(g.XYZ) != n || len(g.FeaturesDC) != n || len(g.Scaling) != n ||
		len(g.Rotation) != n {
		t.Fatalf("Gaussian array lengths %d %d %d %d %d", len(g.XYZ), len(g.FeaturesDC),
			len(g.Scaling), len(g.Rotation), n)
	}
	for i := 0; i < n; i++ {
		for k := 0; k < 3; k++ {
			if !finite(g.XYZ[i][k]) || !finite(g.FeaturesDC[i][k]) || !(g.Scaling[i][k] > 0) {
				t.Fatalf("Gaussian %d: xyz %v dc %v scale %v", i, g.XYZ[i], g.FeaturesDC[i], g.Scaling[i])
			}
		}
		q := g.Rotation[i]
		norm := math.Sqrt(float64(q[0]*q[0] + q[1]*q[1] + q[2]*q[2] + q[3]*q[3]))
		if math.Abs(norm-1) > 1e-3 || !(g.Opacity[i] >= 0 && g.Opacity[i] <= 1) {
			t.Fatalf("Gaussian %d: rotation %v opacity %v", i, q, g.Opacity[i])
		}
	}
}

func checkMesh(t *testing.T, m *Mesh) {
	t.Helper()
	nv := len(m.Positions)
	if nv == 0 || len(m.Faces) == 0 {
		t.Fatalf("mesh of %d vertices, %d faces", nv, len(m.Faces))
	}
	if m.Colors != nil && len(m.Colors) != nv {
		t.Fatalf("%d colours for %d vertices", len(m.Colors), nv)
	}
	for i, p := range m.Positions {
		for k := 0; k < 3; k++ {
			if !finite(p[k]) {
				t.Fatalf("vertex %d: %v", i, p)
			}
			if m.Colors != nil && !(m.Colors[i][k] >= 0 && m.Colors[i][k] <= 1) {
				t.Fatalf("colour %d: %v", i, m.Colors[i])
			}
		}
	}
	for i, f := range m.Faces {
		for _, v := range f {
			if int(v) >= nv {
				t.Fatalf("face %d: %v with %d vertices", i, f, nv)
			}
		}
	}
}

// checkProgress: every stage from preprocess to decode, in order, steps counting up by one from
// 0 to each stage's total; the samplers' totals are their steps.
func checkProgress(t *testing.T, reports []Progress) {
	t.Helper()
	var seq []string
	for _, r := range reports {
		seq = append(seq, fmt.Sprintf("%d:%d/%d", r.Stage, r.Step, r.Total))
	}
	t.Logf("progress: %s", strings.Join(seq, " "))
	if len(reports) == 0 || reports[0].Stage != StagePreprocess || reports[0].Step != 0 {
		t.Fatal("the first report is not preprocess 0")
	}
	seen := map[Stage]bool{}
	for i, r := range reports {
		seen[r.Stage] = true
		if r.Step > r.Total {
			t.Fatalf("report %d: step past total", i)
		}
		if r.Stage == StageSparseStructure && r.Total != genSSSteps ||
			r.Stage == StageStructuredLatent && r.Total != genSLatSteps {
			t.Fatalf("report %d: %+v, sampler total is not its steps", i, r)
		}
		if i == 0 {
			continue
		}
		prev := reports[i-1]
		if r.Stage == prev.Stage && (r.Step != prev.Step+1 || r.Total != prev.Total) ||
			r.Stage != prev.Stage && (r.Stage < prev.Stage || r.Step != 0 || prev.Step != prev.Total) {
			t.Fatalf("report %d (%+v) does not follow %+v", i, r, prev)
		}
	}
	for s := StagePreprocess; s <= StageDecode; s++ {
		if !seen[s] {
			t.Fatalf("stage %v never reported", s)
		}
	}
	if last := reports[len(reports)-1]; last.Stage != StageDecode || last.Step != last.Total {
		t.Fatalf("last report %+v", last)
	}
}

// A real generation with the mesh: outputs, progress, exports, refusals, Close.
func TestGenerate(t *testing.T) {
	m := sharedModel(t)
	img, err := png.Decode(bytes.NewReader(imageBytes(t)))
	if err != nil {
		t.Fatal(err)
	}
	params := quickParams(FormatGaussians | FormatMesh)
	var reports []Progress
	params.Progress = func(p Progress) bool {
		reports = append(reports, p)
		return true
	}
	start := time.Now()
	res, err := m.Run(context.Background(), []Image{FromImage(img)}, params)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	t.Logf("generation (Gaussians + mesh, %d + %d steps): %v", genSSSteps, genSLatSteps, time.Since(start))
	checkProgress(t, reports)

	g, err := res.Gaussians()
	if err != nil {
		t.Fatal(err)
	}
	checkGaussians(t, g)
	mesh, err := res.Mesh()
	if err != nil {
		t.Fatal(err)
	}
	checkMesh(t, mesh)
	t.Logf("%d Gaussians; mesh of %d vertices, %d triangles", g.Len(), len(mesh.Positions), len(mesh.Faces))
	cams, err := res.Cameras()
	if err != nil || len(cams) != 0 {
		t.Fatalf("Cameras() = %v, %v; TRELLIS estimates no poses", cams, err)
	}
	_, err = res.Camera(0)
	wantStatus(t, err, ErrInvalidArgument, "out of range")
	for _, index := range []int{0, 1, -1} {
		_, _, err = res.CameraMatrices(index)
		wantStatus(t, err, ErrInvalidArgument, "out of range")
	}

	// GLB to a file, the same bytes in memory.
	glbPath := filepath.Join(t.TempDir(), "asset.glb")
	if err := res.Export(ExportGLB, glbPath); err != nil {
		t.Fatal(err)
	}
	glb, err := os.ReadFile(glbPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(glb) < 20 || string(glb[:4]) != "glTF" {
		t.Fatalf("GLB of %d bytes starts %q", len(glb), glb[:4])
	}
	glbBytes, err := res.ExportBytes(ExportGLB)
	if err != nil || !bytes.Equal(glbBytes, glb) {
		t.Fatalf("ExportBytes(GLB): %d bytes, %v; the file has %d", len(glbBytes), err, len(glb))
	}
	// With cameras: TRELLIS estimates no poses, so the same file.
	withCameras, err := res.ExportBytes(ExportGLBWithCameras)
	if err != nil || !bytes.Equal(withCameras, glb) {
		t.Fatalf("ExportBytes(GLBWithCameras): %d bytes, %v; the GLB has %d", len(withCameras), err, len(glb))
	}
	// Gaussian PLY in memory: one vertex record per Gaussian.
	ply, err := res.ExportBytes(ExportPLYGaussians)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("\nelement vertex %d\n", g.Len()); !bytes.HasPrefix(ply, []byte("ply\n")) ||
		!bytes.Contains(ply[:min(len(ply), 4096)], []byte(want)) {
		t.Fatalf("Gaussian PLY header: %q", ply[:min(len(ply), 200)])
	}
	t.Logf("GLB %d bytes, Gaussian PLY %d bytes", len(glb), len(ply))

	// Refusals carry the result's message.
	err = res.Export(ExportFormat(0), glbPath)
	wantStatus(t, err, ErrInvalidArgument, "format")
	_, err = res.ExportBytes(ExportFormat(6))
	wantStatus(t, err, ErrInvalidArgument, "format")
	err = res.Export(ExportOBJ, filepath.Join(t.TempDir(), "no_such_dir", "a.obj"))
	wantStatus(t, err, ErrIO, "")

	// Close: idempotent; the copies stay valid; later calls fail with ErrClosed.
	res.Close()
	res.Close()
	if _, err := res.Gaussians(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Gaussians after Close: %v", err)
	}
	if err := res.Export(ExportGLB, glbPath); !errors.Is(err, ErrClosed) {
		t.Fatalf("Export after Close: %v", err)
	}
	checkGaussians(t, g)
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// Cancelling a run through its context from another goroutine: the run is held in its progress
// callback when the sparse-structure sampler starts until the context has been cancelled, so the
// cancel lands while the run is in flight. Then the model still works.
func TestCancelFromGoroutine(t *testing.T) {
	m := sharedModel(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	params := quickParams(FormatGaussians)
	var maxStage Stage
	params.Progress = func(p Progress) bool {
		if p.Stage > maxStage {
			maxStage = p.Stage
		}
		if p.Stage == StageSparseStructure && p.Step == 0 {
			close(started)
			select {
			case <-ctx.Done():
				time.Sleep(50 * time.Millisecond) // let Run's watcher call recon_cancel
			case <-time.After(60 * time.Second):
				t.Error("the test never cancelled")
			}
		}
		return true
	}
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := m.Run(ctx, []Image{EncodedImage(imageBytes(t))}, params)
		done <- outcome{res, err}
	}()
	select {
	case <-started:
	case <-time.After(120 * time.Second):
		t.Fatal("the run never reached the sampler")
	}
	cancelled := time.Now()
	cancel()
	out := <-done
	if out.res != nil {
		out.res.Close()
		t.Fatal("a cancelled run returned a result")
	}
	if !errors.Is(out.err, ErrCancelled) || !errors.Is(out.err, context.Canceled) {
		t.Fatalf("got %v, want ErrCancelled wrapping context.Canceled", out.err)
	}
	if maxStage != StageSparseStructure {
		t.Fatalf("the run went on to stage %v", maxStage)
	}
	t.Logf("returned %v after cancel: %v", time.Since(cancelled), out.err)

	// The model is still usable.
	res, err := m.Run(context.Background(), []Image{EncodedImage(imageBytes(t))}, quickParams(FormatGaussians))
	if err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	defer res.Close()
	g, err := res.Gaussians()
	if err != nil {
		t.Fatal(err)
	}
	checkGaussians(t, g)
	// No mesh was asked for.
	_, err = res.Mesh()
	wantStatus(t, err, ErrInvalidArgument, "mesh")
}

// A context that ends before the run, a deadline, and a progress callback that says stop.
func TestRunStops(t *testing.T) {
	m := sharedModel(t)
	views := []Image{EncodedImage(imageBytes(t))}

	done, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := m.Run(done, views, quickParams(FormatGaussians))
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("already cancelled: %v", err)
	}

	ctx, stop := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer stop()
	params := quickParams(FormatGaussians)
	params.Progress = func(p Progress) bool {
		if p.Stage == StageSparseStructure {
			<-ctx.Done() // outlast the deadline
		}
		return true
	}
	_, err = m.Run(ctx, views, params)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}

	var calls int
	params.Progress = func(Progress) bool { calls++; return false }
	_, err = m.Run(context.Background(), views, params)
	wantStatus(t, err, ErrCancelled, "progress callback")
	if calls != 1 || errors.Is(err, context.Canceled) {
		t.Fatalf("%d progress calls; %v", calls, err)
	}
}

// A panic in the progress callback stops the run and comes out of Run.
func TestProgressPanic(t *testing.T) {
	m := sharedModel(t)
	params := quickParams(FormatGaussians)
	params.Progress = func(Progress) bool { panic("progress boom") }
	func() {
		defer func() {
			if r := recover(); r != "progress boom" {
				t.Fatalf("recovered %v, want the callback's panic", r)
			}
		}()
		m.Run(context.Background(), []Image{EncodedImage(imageBytes(t))}, params)
		t.Fatal("Run returned instead of panicking")
	}()
	// The library saw a cancel; the run after it is unaffected.
	params.Progress = func(p Progress) bool { return p.Stage < StageCondition }
	_, err := m.Run(context.Background(), []Image{EncodedImage(imageBytes(t))}, params)
	wantStatus(t, err, ErrCancelled, "progress callback")
}

// Runs on one model take turns. A Run whose context ends while it waits gives up without
// disturbing the run in flight (the library's cancel is per model, not per run).
func TestWaitingRunGivesUp(t *testing.T) {
	m := sharedModel(t)
	views := []Image{EncodedImage(imageBytes(t))}
	holding := make(chan struct{})
	release := make(chan struct{})
	params := quickParams(FormatGaussians)
	params.Progress = func(p Progress) bool {
		if p.Stage == StageCondition && p.Step == 0 {
			close(holding)
			<-release
			return false // stop here: enough for this test
		}
		return true
	}
	first := make(chan error, 1)
	go func() {
		_, err := m.Run(context.Background(), views, params)
		first <- err
	}()
	<-holding
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := m.Run(ctx, views, quickParams(FormatGaussians))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting") {
		t.Fatalf("waiting run: %v", err)
	}
	close(release)
	// The first run was stopped by its own callback, not by the other context's cancel.
	wantStatus(t, <-first, ErrCancelled, "progress callback")
}

// A result outlives its model; a closed model refuses runs; Close is idempotent.
func TestCloseOrder(t *testing.T) {
	m, err := Load(context.Background(), LoadOptions{Model: modelDir(t), Device: CPU, Offline: OfflineOnly})
	if err != nil {
		t.Fatal(err)
	}
	views := []Image{EncodedImage(imageBytes(t))}
	res, err := m.Run(context.Background(), views, quickParams(FormatGaussians))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	m.Close()
	m.Close()
	if _, err := m.Run(context.Background(), views, quickParams(FormatGaussians)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	if m.Pipeline() != "TrellisImageTo3DPipeline" {
		t.Fatal("Pipeline() after Close")
	}
	ply, err := res.ExportBytes(ExportPLYGaussians)
	if err != nil || !bytes.HasPrefix(ply, []byte("ply\n")) {
		t.Fatalf("export after the model's Close: %v", err)
	}
	_, err = res.ExportBytes(ExportGLB) // no mesh
	wantStatus(t, err, ErrInvalidArgument, "RECON_FORMAT_MESH")
}

// Handles that are never closed are freed by their finalizers (run here under cgocheck=2).
func TestFinalizers(t *testing.T) {
	for i := 0; i < 2; i++ {
		m, err := Load(context.Background(), LoadOptions{
			Model: modelDir(t), Device: CPU, Offline: OfflineOnly, Log: func(LogLevel, string) {},
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = m.Networks()
	}
	runtime.GC()
	runtime.GC()
	time.Sleep(100 * time.Millisecond) // finalizers run on their own goroutine
}

func TestFromImage(t *testing.T) {
	// A converted image (8-bit grey): tightly packed RGBA.
	gray := image.NewGray(image.Rect(0, 0, 3, 2))
	gray.Pix[4] = 200
	img := FromImage(gray)
	if img.Format != ImageRGBA8 || img.Width != 3 || img.Height != 2 || img.Stride != 12 ||
		len(img.Data) != 24 || !bytes.Equal(img.Data[16:20], []byte{200, 200, 200, 255}) {
		t.Fatalf("FromImage(gray) = %+v", img)
	}
	// A sub-image of an NRGBA image: no copy, the parent's stride, only the bytes it covers.
	parent := image.NewNRGBA(image.Rect(0, 0, 8, 8))
	parent.Pix[parent.PixOffset(2, 3)] = 7
	sub := parent.SubImage(image.Rect(2, 3, 5, 5)).(*image.NRGBA)
	img = FromImage(sub)
	if img.Width != 3 || img.Height != 2 || img.Stride != 32 || len(img.Data) != 32+12 ||
		img.Data[0] != 7 || &img.Data[0] != &parent.Pix[parent.PixOffset(2, 3)] {
		t.Fatalf("FromImage(sub-image) = %+v", img)
	}
}
