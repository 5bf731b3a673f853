// recon.hpp — header-only C++17 wrapper over the recon C ABI (recon.h).
//
//     #include <recon.hpp>
//
//     recon::LoadOptions lo;
//     lo.model = "microsoft/TRELLIS-image-large";        // or a local model directory
//     lo.on_log = [](recon::LogLevel, std::string_view msg) { std::cerr << msg << '\n'; };
//     recon::Model model = recon::Model::load(lo);       // throws recon::Error
//
//     recon::RunOptions ro;
//     ro.seed = 1;
//     ro.on_progress = [](const recon::Progress& p) { return true; };  // false cancels
//     recon::Result result = model.run(recon::Image::from_file("cutout.png"), ro);
//     for (float x : result.gaussians().xyz) { ... }     // views valid while `result` lives
//     result.export_to("asset.glb", recon::ExportFormat::glb);
//
// What it adds to recon.h is idiom only (every behaviour lives once, in the library):
// - Ownership: Model, Result and Buffer own their handle (move-only; freed by the destructor).
// - Errors: failures throw recon::Error (status() + the library's message); Model::try_load and
//   Model::try_run return recon::Expected<T> instead of throwing.
// - Arrays: recon::span<const T> views into the Result (std::span under C++20).
// - Callbacks: std::function (lambdas). The log sink lives in the Model; the progress sink lives
//   in the run's stack frame. An exception thrown by a progress callback cancels the run and is
//   rethrown by Model::run; one thrown by a log callback is swallowed (logging cannot fail a run).
// - Options: unset std::optional fields keep the library's defaults (recon_*_init), so defaults
//   are never duplicated here.
//
// Threading is recon.h's: a Model may be used from any thread (runs are serialised),
// Model::cancel() may be called from any thread, callbacks run on the calling thread.
#ifndef RECON_HPP
#define RECON_HPP

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#if __cplusplus >= 202002L && __has_include(<span>)
#include <span>
#endif

#include "recon.h"

namespace recon {

// ---------------------------------------------------------------------------------------------
// Views

#if defined(__cpp_lib_span) && __cpp_lib_span >= 202002L
template <class T>
using span = std::span<T>;
#else
// A minimal std::span stand-in for C++17: a pointer and a length, no ownership.
template <class T>
class span {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using size_type = std::size_t;
    using iterator = T*;

    constexpr span() noexcept = default;
    constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
    constexpr span(const span<U>& other) noexcept : data_(other.data()), size_(other.size()) {}
    template <class C, class = decltype(std::data(std::declval<C&>())),
              class = std::enable_if_t<std::is_convertible_v<
                  std::remove_pointer_t<decltype(std::data(std::declval<C&>()))> (*)[],
                  T (*)[]>>>
    constexpr span(C& container) noexcept
        : data_(std::data(container)), size_(std::size(container)) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
    constexpr T& front() const noexcept { return data_[0]; }
    constexpr T& back() const noexcept { return data_[size_ - 1]; }
    constexpr iterator begin() const noexcept { return data_; }
    constexpr iterator end() const noexcept { return data_ + size_; }
    constexpr span subspan(std::size_t offset, std::size_t count) const noexcept {
        return span(data_ + offset, count);
    }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};
#endif

// ---------------------------------------------------------------------------------------------
// Constants (the values of recon.h's macros, typed)

// recon_status.
enum class Status : std::int32_t {
    ok = RECON_OK,
    invalid_argument = RECON_ERR_INVALID_ARGUMENT,
    io = RECON_ERR_IO,
    network = RECON_ERR_NETWORK,
    format = RECON_ERR_FORMAT,
    checkpoint = RECON_ERR_CHECKPOINT,
    unsupported = RECON_ERR_UNSUPPORTED,
    cancelled = RECON_ERR_CANCELLED,
    out_of_memory = RECON_ERR_OUT_OF_MEMORY,
    device = RECON_ERR_DEVICE,
    internal = RECON_ERR_INTERNAL,
};

enum class LogLevel : std::int32_t {
    error = RECON_LOG_ERROR,
    warn = RECON_LOG_WARN,
    info = RECON_LOG_INFO,
    debug = RECON_LOG_DEBUG,
};

enum class ExportFormat : std::int32_t {
    glb = RECON_EXPORT_GLB,
    ply_gaussians = RECON_EXPORT_PLY_GAUSSIANS,
    ply_mesh = RECON_EXPORT_PLY_MESH,
    obj = RECON_EXPORT_OBJ,
    // GLB plus one glTF camera node per camera of the result (the plain GLB when it has none).
    glb_with_cameras = RECON_EXPORT_GLB_WITH_CAMERAS,
};

// What a run produces (a bit set: `Outputs::gaussians | Outputs::mesh`).
enum class Outputs : std::uint32_t {
    gaussians = RECON_FORMAT_GAUSSIANS,
    mesh = RECON_FORMAT_MESH,
    radiance_field = RECON_FORMAT_RADIANCE_FIELD,
};

constexpr Outputs operator|(Outputs a, Outputs b) noexcept {
    return static_cast<Outputs>(static_cast<std::uint32_t>(a) | static_cast<std::uint32_t>(b));
}

enum class MultiImageMode : std::int32_t {
    stochastic = RECON_MULTI_IMAGE_STOCHASTIC,
    multidiffusion = RECON_MULTI_IMAGE_MULTIDIFFUSION,
};

enum class Stage : std::int32_t {
    preprocess = RECON_STAGE_PREPROCESS,
    condition = RECON_STAGE_CONDITION,
    sparse_structure = RECON_STAGE_SPARSE_STRUCTURE,
    structured_latent = RECON_STAGE_STRUCTURED_LATENT,
    decode = RECON_STAGE_DECODE,
    export_ = RECON_STAGE_EXPORT,
};

// `LoadOptions::device` values besides a CUDA index >= 0.
inline constexpr std::int32_t device_auto = RECON_DEVICE_AUTO;
inline constexpr std::int32_t device_cpu = RECON_DEVICE_CPU;

// ---------------------------------------------------------------------------------------------
// Versions and errors

// The library's ABI version; this header was written for RECON_ABI_VERSION.
inline std::uint32_t abi_version() noexcept { return recon_abi_version(); }

// The library version, e.g. "0.1.0".
inline std::string_view version() noexcept { return recon_version_string(); }

// Number of CUDA devices the library can use.
inline int cuda_device_count() noexcept { return recon_cuda_device_count(); }

// A short English description of a status ("unknown status" for values recon does not define).
inline std::string_view status_string(Status status) noexcept {
    return recon_status_string(static_cast<std::int32_t>(status));
}

// A failed recon call: the status and the library's message.
class Error : public std::runtime_error {
public:
    Error(Status status, std::string message)
        : std::runtime_error(describe(status, message)),
          status_(status),
          message_(std::make_shared<const std::string>(std::move(message))) {}

    Status status() const noexcept { return status_; }
    // The library's message alone (what() is "<status text>: <message>").
    const std::string& message() const noexcept { return *message_; }

private:
    static std::string describe(Status status, const std::string& message) {
        std::string text(status_string(status));
        if (!message.empty()) text.append(": ").append(message);
        return text;
    }

    Status status_;
    std::shared_ptr<const std::string> message_;  // shared: copying an Error cannot throw
};

// Throws unless the loaded library speaks this header's ABI. Model::load calls it.
inline void check_abi() {
    if (abi_version() != RECON_ABI_VERSION) {
        throw Error(Status::unsupported,
                    "librecon has ABI version " + std::to_string(abi_version()) +
                        ", but recon.hpp was built against ABI version " +
                        std::to_string(RECON_ABI_VERSION));
    }
}

// A value or the Error that prevented it: the non-throwing results of try_load / try_run.
template <class T>
class Expected {
public:
    Expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}
    Expected(Error error) : state_(std::in_place_index<1>, std::move(error)) {}

    bool has_value() const noexcept { return state_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    // The value; throws the Error when there is none.
    T& value() & {
        if (!has_value()) throw std::get<1>(state_);
        return std::get<0>(state_);
    }
    const T& value() const& {
        if (!has_value()) throw std::get<1>(state_);
        return std::get<0>(state_);
    }
    T&& value() && {
        if (!has_value()) throw std::get<1>(state_);
        return std::get<0>(std::move(state_));
    }
    T& operator*() & { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    // The error; only meaningful when !has_value().
    const Error& error() const { return std::get<1>(state_); }

private:
    std::variant<T, Error> state_;
};

// ---------------------------------------------------------------------------------------------
// Inputs

// One input view (recon_image). The bytes are borrowed unless the Image was made by
// from_file / from_bytes, which own a copy shared between copies of the Image.
class Image {
public:
    // Encoded PNG, JPEG or WebP bytes; they must outlive the run.
    static Image encoded(const void* data, std::size_t size) {
        Image image;
        image.raw_.format = RECON_IMAGE_ENCODED;
        image.raw_.data = static_cast<const std::uint8_t*>(data);
        image.raw_.size = size;
        return image;
    }

    // Raw 8-bit RGB pixels, `stride` bytes per row (0: tightly packed); borrowed.
    static Image rgb8(const std::uint8_t* pixels, std::size_t size, std::uint32_t width,
                      std::uint32_t height, std::size_t stride = 0) {
        return raw(RECON_IMAGE_RGB8, pixels, size, width, height, stride);
    }

    // Raw 8-bit RGBA pixels (straight alpha); borrowed.
    static Image rgba8(const std::uint8_t* pixels, std::size_t size, std::uint32_t width,
                       std::uint32_t height, std::size_t stride = 0) {
        return raw(RECON_IMAGE_RGBA8, pixels, size, width, height, stride);
    }

    // Encoded bytes, owned by the Image.
    static Image from_bytes(std::vector<std::uint8_t> bytes) {
        auto owned = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
        Image image = encoded(owned->data(), owned->size());
        image.owned_ = std::move(owned);
        return image;
    }

    // An encoded image file read into memory; throws Error(Status::io) when it cannot be read.
    static Image from_file(const std::string& path) {
        std::ifstream file(path, std::ios::binary);
        if (!file) throw Error(Status::io, "cannot open " + path);
        std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(file)),
                                        std::istreambuf_iterator<char>());
        if (file.bad()) throw Error(Status::io, "cannot read " + path);
        return from_bytes(std::move(bytes));
    }

    const recon_image& raw() const noexcept { return raw_; }

private:
    Image() { recon_image_init(&raw_); }

    static Image raw(std::int32_t format, const std::uint8_t* pixels, std::size_t size,
                     std::uint32_t width, std::uint32_t height, std::size_t stride) {
        Image image;
        image.raw_.format = format;
        image.raw_.data = pixels;
        image.raw_.size = size;
        image.raw_.width = width;
        image.raw_.height = height;
        image.raw_.stride = stride;
        return image;
    }

    recon_image raw_{};
    std::shared_ptr<const std::vector<std::uint8_t>> owned_;
};

// recon_load_params. Unset fields keep recon_load_params_init's defaults.
struct LoadOptions {
    // A local model directory or a Hugging Face repo id ("owner/name[@revision]"). Required.
    std::string model;
    // device_auto, device_cpu or a CUDA index.
    std::optional<std::int32_t> device;
    // true: local Hub cache only; false: download; unset: HF_HUB_OFFLINE decides.
    std::optional<bool> offline;
    // Most verbose level delivered to on_log.
    std::optional<LogLevel> log_level;
    // Log sink, kept by the Model for its lifetime; called on the loading / running thread.
    std::function<void(LogLevel, std::string_view)> on_log;
};

// A progress report (recon_progress).
struct Progress {
    Stage stage;
    std::uint32_t step;
    std::uint32_t total;
};

// recon_run_params. Unset fields keep recon_run_params_init's defaults.
struct RunOptions {
    std::optional<std::uint64_t> seed;
    std::optional<std::uint32_t> sparse_structure_steps;
    std::optional<float> sparse_structure_cfg_strength;
    std::optional<std::uint32_t> slat_steps;
    std::optional<float> slat_cfg_strength;
    std::optional<Outputs> outputs;
    std::optional<MultiImageMode> multi_image_mode;
    std::optional<bool> preprocess;
    // Called on the running thread; return false to cancel. An exception cancels the run and
    // is rethrown by Model::run.
    std::function<bool(const Progress&)> on_progress;
};

// ---------------------------------------------------------------------------------------------
// Outputs

// 3D Gaussians: views into a Result, valid while it lives.
struct Gaussians {
    std::size_t count = 0;
    span<const float> xyz;          // count × 3
    span<const float> features_dc;  // count × 3
    span<const float> scaling;      // count × 3
    span<const float> rotation;     // count × 4 (w, x, y, z)
    span<const float> opacity;      // count
};

// A triangle mesh: views into a Result, valid while it lives.
struct Mesh {
    std::size_t num_vertices = 0;
    std::size_t num_faces = 0;
    span<const float> positions;       // num_vertices × 3
    span<const float> colors;          // num_vertices × 3, empty when the mesh has none
    span<const std::uint32_t> indices;  // num_faces × 3
};

// A camera recovered for one input view (OpenCV convention, camera-from-world).
struct Camera {
    std::uint32_t width = 0;
    std::uint32_t height = 0;
    std::array<float, 12> extrinsic{};  // 3×4 row-major [R | t]
    std::array<float, 9> intrinsic{};   // 3×3 row-major, pixels
};

// A camera as matrices (recon_result_camera_matrices), row-major, conventions of Camera.
struct CameraMatrices {
    std::array<float, 16> extrinsic{};  // 4×4 camera-from-world [R | t] over 0 0 0 1
    std::array<float, 9> intrinsic{};   // 3×3, pixels
};

// One network of a loaded model (recon_network_info), copied.
struct NetworkInfo {
    std::string key;
    std::string class_name;
    std::string stem;
    bool implemented = false;
    std::uint64_t num_elements = 0;
};

namespace detail {

struct ModelDeleter {
    void operator()(recon_model* model) const noexcept { recon_free(model); }
};
struct ResultDeleter {
    void operator()(recon_result* result) const noexcept { recon_result_free(result); }
};
struct BufferDeleter {
    void operator()(recon_buffer* buffer) const noexcept { recon_buffer_free(buffer); }
};

using LogSink = std::function<void(LogLevel, std::string_view)>;

inline void log_trampoline(std::int32_t level, const char* message, void* user_data) {
    auto* sink = static_cast<LogSink*>(user_data);
    try {
        (*sink)(static_cast<LogLevel>(level), message ? std::string_view(message) : "");
    } catch (...) {
        // Logging cannot fail a call, and no exception may cross the C ABI.
    }
}

// The progress callback's state, in Model::run's stack frame.
struct RunFrame {
    const std::function<bool(const Progress&)>* sink;
    std::exception_ptr error;
};

inline std::int32_t progress_trampoline(const recon_progress* progress, void* user_data) {
    auto* frame = static_cast<RunFrame*>(user_data);
    if (frame->error) return 0;
    try {
        Progress p{static_cast<Stage>(progress->stage), progress->step, progress->total};
        return (*frame->sink)(p) ? 1 : 0;
    } catch (...) {
        frame->error = std::current_exception();
        return 0;
    }
}

inline std::string copy_string(const char* text) { return text ? std::string(text) : std::string(); }

}  // namespace detail

// A library-owned byte buffer (recon_buffer): move-only, freed by the destructor.
class Buffer {
public:
    explicit Buffer(recon_buffer* buffer) noexcept : handle_(buffer) {}

    const std::uint8_t* data() const noexcept { return recon_buffer_data(handle_.get()); }
    std::size_t size() const noexcept { return recon_buffer_size(handle_.get()); }
    span<const std::uint8_t> bytes() const noexcept { return {data(), size()}; }
    std::vector<std::uint8_t> to_vector() const { return {data(), data() + size()}; }
    recon_buffer* get() const noexcept { return handle_.get(); }

private:
    std::unique_ptr<recon_buffer, detail::BufferDeleter> handle_;
};

// The outputs of one run (recon_result): move-only, independent of the Model.
class Result {
public:
    // Takes ownership of a result from recon_run.
    explicit Result(recon_result* result) noexcept : handle_(result) {}

    // The Gaussians; throws Error when the run did not produce them.
    Gaussians gaussians() const {
        recon_gaussians g{};
        g.struct_size = sizeof g;
        check(recon_result_gaussians(get(), &g));
        Gaussians out;
        out.count = g.count;
        out.xyz = {g.xyz, 3 * g.count};
        out.features_dc = {g.features_dc, 3 * g.count};
        out.scaling = {g.scaling, 3 * g.count};
        out.rotation = {g.rotation, 4 * g.count};
        out.opacity = {g.opacity, g.count};
        return out;
    }

    // The mesh; throws Error when the run did not produce one.
    Mesh mesh() const {
        recon_mesh m{};
        m.struct_size = sizeof m;
        check(recon_result_mesh(get(), &m));
        Mesh out;
        out.num_vertices = m.num_vertices;
        out.num_faces = m.num_faces;
        out.positions = {m.positions, 3 * m.num_vertices};
        if (m.colors) out.colors = {m.colors, 3 * m.num_vertices};
        out.indices = {m.indices, 3 * m.num_faces};
        return out;
    }

    std::size_t num_cameras() const noexcept { return recon_result_num_cameras(get()); }

    // Camera `index` (< num_cameras()); throws Error otherwise.
    Camera camera(std::size_t index) const {
        recon_camera c{};
        c.struct_size = sizeof c;
        check(recon_result_camera(get(), index, &c));
        Camera out;
        out.width = c.width;
        out.height = c.height;
        std::copy(std::begin(c.extrinsic), std::end(c.extrinsic), out.extrinsic.begin());
        std::copy(std::begin(c.intrinsic), std::end(c.intrinsic), out.intrinsic.begin());
        return out;
    }

    // Camera `index` (< num_cameras()) as 4×4 and 3×3 matrices; throws Error otherwise.
    CameraMatrices camera_matrices(std::size_t index) const {
        CameraMatrices out;
        check(recon_result_camera_matrices(get(), index, out.extrinsic.data(),
                                           out.intrinsic.data()));
        return out;
    }

    std::vector<Camera> cameras() const {
        std::vector<Camera> out;
        for (std::size_t i = 0, n = num_cameras(); i < n; ++i) out.push_back(camera(i));
        return out;
    }

    // Writes the result to `path` (UTF-8) as `format`; the file appears whole or not at all.
    void export_to(const std::string& path, ExportFormat format) const {
        check(recon_result_export(get(), static_cast<std::int32_t>(format), path.c_str()));
    }

    // The exported file in a library-owned buffer (no copy).
    Buffer export_buffer(ExportFormat format) const {
        recon_buffer* buffer = nullptr;
        check(recon_result_export_buffer(get(), static_cast<std::int32_t>(format), &buffer));
        return Buffer(buffer);
    }

    // The exported file as bytes.
    std::vector<std::uint8_t> export_bytes(ExportFormat format) const {
        return export_buffer(format).to_vector();
    }

    // The message of the latest failed call on this result ("" when none).
    std::string last_error() const { return detail::copy_string(recon_result_last_error(get())); }

    recon_result* get() const noexcept { return handle_.get(); }
    recon_result* release() noexcept { return handle_.release(); }

private:
    void check(recon_status status) const {
        if (status != RECON_OK) throw Error(static_cast<Status>(status), last_error());
    }

    std::unique_ptr<recon_result, detail::ResultDeleter> handle_;
};

// A loaded pipeline (recon_model): move-only, freed by the destructor. Usable from any thread.
class Model {
public:
    // Loads a pipeline; throws Error naming what was wrong.
    static Model load(LoadOptions options) {
        check_abi();
        auto sink = options.on_log ? std::make_unique<detail::LogSink>(std::move(options.on_log))
                                   : nullptr;
        recon_load_params params;
        recon_load_params_init(&params);
        params.model = options.model.c_str();
        if (options.device) params.device = *options.device;
        if (options.offline) params.offline = *options.offline ? 1 : 0;
        if (options.log_level) params.log_level = static_cast<std::int32_t>(*options.log_level);
        if (sink) {
            params.log_callback = &detail::log_trampoline;
            params.log_user_data = sink.get();
        }
        recon_model* model = nullptr;
        char message[1024] = "";
        recon_status status = recon_load(&params, &model, message, sizeof message);
        if (status != RECON_OK) throw Error(static_cast<Status>(status), message);
        return Model(model, std::move(sink));
    }

    // Loads a local directory or Hub repo id with the default options.
    static Model load(const std::string& model) {
        LoadOptions options;
        options.model = model;
        return load(std::move(options));
    }

    // As load(), returning the Error instead of throwing it.
    static Expected<Model> try_load(LoadOptions options) noexcept {
        try {
            return load(std::move(options));
        } catch (const Error& error) {
            return error;
        } catch (const std::bad_alloc&) {
            return Error(Status::out_of_memory, "std::bad_alloc");
        } catch (const std::exception& e) {
            return Error(Status::internal, e.what());
        }
    }

    // Generates an asset from views of one object; throws Error (Status::cancelled when
    // cancelled), or rethrows what the progress callback threw.
    Result run(const std::vector<Image>& images, const RunOptions& options = {}) const {
        std::vector<recon_image> raw;
        raw.reserve(images.size());
        for (const Image& image : images) raw.push_back(image.raw());
        recon_run_params params;
        recon_run_params_init(&params);
        if (options.seed) params.seed = *options.seed;
        if (options.sparse_structure_steps)
            params.sparse_structure_steps = *options.sparse_structure_steps;
        if (options.sparse_structure_cfg_strength)
            params.sparse_structure_cfg_strength = *options.sparse_structure_cfg_strength;
        if (options.slat_steps) params.slat_steps = *options.slat_steps;
        if (options.slat_cfg_strength) params.slat_cfg_strength = *options.slat_cfg_strength;
        if (options.outputs) params.formats = static_cast<std::uint32_t>(*options.outputs);
        if (options.multi_image_mode)
            params.multi_image_mode = static_cast<std::int32_t>(*options.multi_image_mode);
        if (options.preprocess) params.preprocess = *options.preprocess ? 1 : 0;
        detail::RunFrame frame{&options.on_progress, nullptr};
        if (options.on_progress) {
            params.progress_callback = &detail::progress_trampoline;
            params.progress_user_data = &frame;
        }
        recon_result* result = nullptr;
        recon_status status = recon_run(get(), raw.data(), raw.size(), &params, &result);
        if (frame.error) {
            recon_result_free(status == RECON_OK ? result : nullptr);
            std::rethrow_exception(frame.error);
        }
        if (status != RECON_OK) throw Error(static_cast<Status>(status), last_error());
        return Result(result);
    }

    Result run(const Image& image, const RunOptions& options = {}) const {
        return run(std::vector<Image>{image}, options);
    }

    // As run(), returning the Error instead of throwing it (an exception thrown by the progress
    // callback becomes Status::cancelled with its what()).
    Expected<Result> try_run(const std::vector<Image>& images,
                             const RunOptions& options = {}) const noexcept {
        try {
            return run(images, options);
        } catch (const Error& error) {
            return error;
        } catch (const std::bad_alloc&) {
            return Error(Status::out_of_memory, "std::bad_alloc");
        } catch (const std::exception& e) {
            return Error(Status::cancelled, e.what());
        } catch (...) {
            return Error(Status::cancelled, "the progress callback threw");
        }
    }

    Expected<Result> try_run(const Image& image, const RunOptions& options = {}) const noexcept {
        try {
            return try_run(std::vector<Image>{image}, options);
        } catch (...) {
            return Error(Status::out_of_memory, "std::bad_alloc");
        }
    }

    // Asks the run in progress to stop (it throws Error(Status::cancelled)). Any thread.
    void cancel() const noexcept { recon_cancel(get()); }

    // pipeline.json's name, e.g. "TrellisImageTo3DPipeline"; valid while the Model lives.
    std::string_view pipeline_name() const noexcept { return recon_model_pipeline_name(get()); }

    // device_cpu or a CUDA index.
    std::int32_t device() const noexcept { return recon_model_device(get()); }

    std::size_t num_networks() const noexcept { return recon_model_num_networks(get()); }

    // Network `index` (< num_networks()); throws Error otherwise.
    NetworkInfo network(std::size_t index) const {
        recon_network_info info{};
        info.struct_size = sizeof info;
        recon_status status = recon_model_network(get(), index, &info);
        if (status != RECON_OK) throw Error(static_cast<Status>(status), last_error());
        NetworkInfo out;
        out.key = detail::copy_string(info.key);
        out.class_name = detail::copy_string(info.class_name);
        out.stem = detail::copy_string(info.stem);
        out.implemented = info.implemented != 0;
        out.num_elements = info.num_elements;
        return out;
    }

    std::vector<NetworkInfo> networks() const {
        std::vector<NetworkInfo> out;
        for (std::size_t i = 0, n = num_networks(); i < n; ++i) out.push_back(network(i));
        return out;
    }

    // The message of the latest failed call on this model ("" when none).
    std::string last_error() const { return detail::copy_string(recon_model_last_error(get())); }

    recon_model* get() const noexcept { return handle_.get(); }

private:
    Model(recon_model* model, std::unique_ptr<detail::LogSink> sink) noexcept
        : log_sink_(std::move(sink)), handle_(model) {}

    // Declared first so that it is destroyed last: the library may log until recon_free.
    std::unique_ptr<detail::LogSink> log_sink_;
    std::unique_ptr<recon_model, detail::ModelDeleter> handle_;
};

}  // namespace recon

#endif  // RECON_HPP
