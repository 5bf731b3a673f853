// ReconCore.h — the engine-independent core of the Unreal plugin: one loaded model, a
// synchronous mesh generation with progress and cancellation, and the conversion of recon's
// mesh to Unreal's frame. Plain C++17 with no Unreal (and no recon.hpp) types in this header,
// so that it compiles with g++ for bindings/unreal's test and with UnrealBuildTool for the
// plugin, where it sits behind UReconModel. Nothing here throws: failures come back as
// recon_core::Error.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace recon_core {

// A failure: recon's status number (RECON_ERR_*, 0 = none) and the library's message.
struct Error {
    int status = 0;
    std::string message;
    explicit operator bool() const { return status != 0; }
};

// One input view, borrowed for the duration of Generate().
struct ImageView {
    enum class Format { encoded, rgb8, rgba8 };
    Format format = Format::encoded;
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
    std::uint32_t width = 0;   // raw pixels only
    std::uint32_t height = 0;  // raw pixels only
    std::size_t stride = 0;    // raw pixels only; 0: tightly packed
};

// Generation settings; unset / 0 values keep the library's (pipeline.json's) defaults.
struct Options {
    std::optional<std::uint64_t> seed;
    std::uint32_t sparse_structure_steps = 0;
    std::uint32_t slat_steps = 0;
    // When not empty, the result is also written there as GLB (glTF, Y-up, metres).
    std::string glb_path;
};

// A mesh in Unreal's frame: left-handed, X forward, Y right, Z up, centimetres. From recon's
// TRELLIS frame (right-handed, Z up, metres; X right, Y forward/depth) a point maps to
//     unreal = 100 * (y, x, z)
// The axis swap mirrors, and Unreal's triangle normal is (P1 - P2) x (P0 - P2), the opposite
// of the right-handed (P1 - P0) x (P2 - P0): the two flips cancel, so the index order is kept.
struct UnrealMesh {
    std::vector<float> positions;       // num_vertices × 3, centimetres
    std::vector<float> normals;         // num_vertices × 3, unit, outward (area-weighted)
    std::vector<std::uint8_t> colors;   // num_vertices × 4 RGBA8 (alpha 255); empty if none
    std::vector<std::int32_t> triangles;  // num_faces × 3
    std::size_t num_vertices() const { return positions.size() / 3; }
    std::size_t num_faces() const { return triangles.size() / 3; }
};

// recon's arrays (TRELLIS frame) → UnrealMesh. `colors` may be null.
UnrealMesh to_unreal_mesh(const float* positions, const float* colors, std::size_t num_vertices,
                          const std::uint32_t* indices, std::size_t num_faces);

// Progress: stage (RECON_STAGE_*), step of total; return false to cancel the run.
using ProgressFn = std::function<bool(int stage, std::uint32_t step, std::uint32_t total)>;
// Log: level (RECON_LOG_*) and message, on the loading/running thread.
using LogFn = std::function<void(int level, const std::string& message)>;

// One loaded model. Generate() runs on the calling thread (runs are serialised by the library);
// Cancel() and the cancel flag may be used from any thread.
class Session {
public:
    // Loads a local model directory or a Hub repo id on `device` (-2 auto, -1 CPU, >= 0 CUDA).
    static std::shared_ptr<Session> Load(const std::string& model, int device, LogFn log,
                                         Error* error);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Generates a mesh. `cancel` (optional) is checked at every progress report, so a cancel
    // requested before the run started still stops it; Cancel() stops a run in progress.
    std::optional<UnrealMesh> Generate(const std::vector<ImageView>& images, const Options& options,
                                       const std::atomic<bool>* cancel, const ProgressFn& progress,
                                       Error* error) const;

    // Asks the run in progress to stop (recon_cancel); it then fails with RECON_ERR_CANCELLED.
    void Cancel() const;

    std::string PipelineName() const;

private:
    struct Impl;
    explicit Session(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// "recon <version>, ABI <n>" of the loaded library.
std::string LibraryVersion();

}  // namespace recon_core
