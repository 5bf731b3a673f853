// test_recon.cpp — the C++ wrapper's test: every function of the C ABI through recon.hpp.
//
//     test_recon MODEL_DIR IMAGE
//
// MODEL_DIR is the tiny model fixture (tests/fixtures/model_tiny), IMAGE a cut-out PNG
// (tests/fixtures/images/example.png). Generations run on the CPU with 2 + 2 sampler steps.
// Files go to a temporary directory removed at the end. The last line printed is
// "N passed, M failed" (parsed by CI); the exit status is nonzero when M > 0.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "recon.hpp"

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Minimal assertions: each CHECK counts one check; a failure prints where and goes on.

static int g_passed = 0;
static int g_failed = 0;

static void check_impl(bool ok, const char* what, const std::string& detail, int line) {
    if (ok) {
        ++g_passed;
        return;
    }
    ++g_failed;
    std::cerr << "FAIL test_recon.cpp:" << line << ": " << what
              << (detail.empty() ? "" : " -- ") << detail << std::endl;
}

#define CHECK(cond) check_impl(static_cast<bool>(cond), #cond, std::string(), __LINE__)
#define CHECK_MSG(cond, msg) check_impl(static_cast<bool>(cond), #cond, (msg), __LINE__)

// Runs `body`, expecting it to throw recon::Error with `want`; returns the message.
template <class F>
static std::string expect_error(F&& body, recon::Status want, const char* what, int line) {
    try {
        body();
    } catch (const recon::Error& e) {
        check_impl(e.status() == want, what,
                   std::string("got ") + e.what() + ", expected " +
                       std::string(recon::status_string(want)),
                   line);
        return e.message();
    } catch (const std::exception& e) {
        check_impl(false, what, std::string("threw a non-recon exception: ") + e.what(), line);
        return {};
    }
    check_impl(false, what, "did not throw", line);
    return {};
}
#define EXPECT_ERROR(body, want) expect_error([&] { body; }, (want), #body, __LINE__)

static bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static std::string g_model_dir;
static std::string g_image_path;
static fs::path g_tmp;

constexpr std::uint32_t kSteps = 2;  // per sampler: pipeline.json's 25 would take minutes

static recon::LoadOptions tiny_options() {
    recon::LoadOptions lo;
    lo.model = g_model_dir;
    lo.device = recon::device_cpu;
    lo.offline = true;
    return lo;
}

static recon::RunOptions quick(recon::Outputs outputs) {
    recon::RunOptions ro;
    ro.seed = 1;
    ro.sparse_structure_steps = kSteps;
    ro.slat_steps = kSteps;
    ro.outputs = outputs;
    return ro;
}

// ---------------------------------------------------------------------------------------------
// Versions, statuses, types.

static void test_versions() {
    CHECK(recon::abi_version() == RECON_ABI_VERSION);
    CHECK(!recon::version().empty());
    CHECK(recon::cuda_device_count() >= 0);
    bool abi_ok = true;
    try {
        recon::check_abi();
    } catch (const recon::Error&) {
        abi_ok = false;
    }
    CHECK(abi_ok);
    std::cout << "recon " << recon::version() << ", ABI " << recon::abi_version() << ", "
              << recon::cuda_device_count() << " CUDA device(s)" << std::endl;

    CHECK(recon::status_string(recon::Status::ok) == "ok");
    CHECK(recon::status_string(recon::Status::cancelled) == "cancelled");
    CHECK(recon::status_string(static_cast<recon::Status>(99)) == "unknown status");

    recon::Error e(recon::Status::io, "disk on fire");
    CHECK(e.status() == recon::Status::io);
    CHECK(e.message() == "disk on fire");
    CHECK(std::string(e.what()) == "I/O error: disk on fire");

    // Ownership: handles move, never copy.
    static_assert(!std::is_copy_constructible_v<recon::Model>);
    static_assert(std::is_nothrow_move_constructible_v<recon::Model>);
    static_assert(!std::is_copy_constructible_v<recon::Result>);
    static_assert(std::is_nothrow_move_constructible_v<recon::Result>);
    static_assert(!std::is_copy_constructible_v<recon::Buffer>);
    static_assert((static_cast<std::uint32_t>(recon::Outputs::gaussians | recon::Outputs::mesh)) ==
                  (RECON_FORMAT_GAUSSIANS | RECON_FORMAT_MESH));
}

// ---------------------------------------------------------------------------------------------
// Loading: error paths (recon_load's error buffer becomes Error::message), try_load.

static void test_load_errors() {
    recon::LoadOptions lo = tiny_options();
    lo.model = "";
    EXPECT_ERROR(recon::Model::load(lo), recon::Status::invalid_argument);

    lo.model = (g_tmp / "no_such_model_dir").string();
    std::string msg = EXPECT_ERROR(recon::Model::load(lo), recon::Status::io);
    CHECK_MSG(contains(msg, "no_such_model_dir"), msg);

    lo = tiny_options();
    lo.device = 99;
    msg = EXPECT_ERROR(recon::Model::load(lo), recon::Status::device);
    CHECK_MSG(contains(msg, "99"), msg);

    lo = tiny_options();
    lo.log_level = static_cast<recon::LogLevel>(9);
    EXPECT_ERROR(recon::Model::load(lo), recon::Status::invalid_argument);

    // The Hub, offline with an empty cache: a network error naming the repo.
    fs::create_directories(g_tmp / "hf_home");
    const char* old_home = std::getenv("HF_HOME");
    std::string saved_home = old_home ? old_home : "";
    setenv("HF_HOME", (g_tmp / "hf_home").c_str(), 1);
    lo = tiny_options();
    lo.model = "someone/missing-repo";
    auto attempt = recon::Model::try_load(lo);
    CHECK(!attempt.has_value());
    CHECK(!attempt);
    if (!attempt) {
        CHECK_MSG(attempt.error().status() == recon::Status::network, attempt.error().what());
        CHECK_MSG(contains(attempt.error().message(), "someone/missing-repo"),
                  attempt.error().message());
    }
    EXPECT_ERROR(attempt.value(), recon::Status::network);  // value() throws the error
    if (old_home) {
        setenv("HF_HOME", saved_home.c_str(), 1);
    } else {
        unsetenv("HF_HOME");
    }
}

// ---------------------------------------------------------------------------------------------
// A loaded model: log callback, introspection.

static void test_logging() {
    std::vector<std::pair<recon::LogLevel, std::string>> messages;
    recon::LoadOptions lo = tiny_options();
    lo.log_level = recon::LogLevel::debug;
    lo.on_log = [&](recon::LogLevel level, std::string_view message) {
        messages.emplace_back(level, std::string(message));
    };
    auto model = recon::Model::try_load(lo);
    CHECK_MSG(model.has_value(), model ? "" : model.error().what());
    CHECK_MSG(!messages.empty(), "no log message during load");
    bool levels_ok = true;
    for (const auto& m : messages)
        levels_ok &= m.first >= recon::LogLevel::error && m.first <= recon::LogLevel::debug;
    CHECK(levels_ok);
    if (!messages.empty()) std::cout << "first log message: " << messages.front().second << "\n";

    // A throwing log sink cannot break loading.
    lo.on_log = [](recon::LogLevel, std::string_view) { throw std::runtime_error("sink"); };
    auto again = recon::Model::try_load(lo);
    CHECK_MSG(again.has_value(), again ? "" : again.error().what());

    // Only errors: a successful load reports none.
    messages.clear();
    lo.log_level = recon::LogLevel::error;
    lo.on_log = [&](recon::LogLevel level, std::string_view message) {
        messages.emplace_back(level, std::string(message));
    };
    auto quiet = recon::Model::try_load(lo);
    CHECK(quiet.has_value());
    CHECK(messages.empty());
}

static void test_introspection(const recon::Model& model) {
    CHECK(model.get() != nullptr);
    CHECK(model.last_error().empty());
    CHECK(model.pipeline_name() == "TrellisImageTo3DPipeline");
    CHECK(model.device() == recon::device_cpu);
    CHECK(model.num_networks() == 7);
    auto networks = model.networks();
    CHECK(networks.size() == model.num_networks());
    bool all_implemented = true, have_decoder = false;
    for (const auto& n : networks) {
        all_implemented &= n.implemented && n.num_elements > 0 && !n.class_name.empty() &&
                           n.stem.rfind("ckpts/", 0) == 0;
        have_decoder |= n.key == "sparse_structure_decoder" &&
                        n.class_name == "SparseStructureDecoder" &&
                        n.stem == "ckpts/ss_dec_conv3d_tiny_fp16";
        std::cout << "network " << n.key << " (" << n.class_name << ") " << n.stem << ", "
                  << n.num_elements << " elements\n";
    }
    CHECK(all_implemented);
    CHECK(have_decoder);
    std::string msg =
        EXPECT_ERROR(model.network(model.num_networks()), recon::Status::invalid_argument);
    CHECK_MSG(contains(msg, "out of range"), msg);
    CHECK(contains(model.last_error(), "out of range"));
}

// ---------------------------------------------------------------------------------------------
// Runs: validation, a real generation, arrays, exports, progress.

static void test_run_validation(const recon::Model& model) {
    EXPECT_ERROR(model.run(std::vector<recon::Image>{}), recon::Status::invalid_argument);
    static const char garbage[] = "this is not an image at all";
    EXPECT_ERROR(model.run(recon::Image::encoded(garbage, sizeof garbage)),
                 recon::Status::format);
    // Raw pixels whose size does not match width × height × 4.
    std::vector<std::uint8_t> pixels(10, 0);
    EXPECT_ERROR(model.run(recon::Image::rgba8(pixels.data(), pixels.size(), 8, 8)),
                 recon::Status::invalid_argument);
    EXPECT_ERROR(recon::Image::from_file((g_tmp / "missing.png").string()), recon::Status::io);
    auto failed = model.try_run(recon::Image::encoded(garbage, sizeof garbage));
    CHECK(!failed.has_value());
    if (!failed) CHECK(failed.error().status() == recon::Status::format);
}

static bool all_finite(recon::span<const float> values) {
    for (float v : values)
        if (!std::isfinite(v)) return false;
    return true;
}

static std::vector<std::uint8_t> read_file(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

static bool starts_with(const std::vector<std::uint8_t>& bytes, const std::string& prefix) {
    return bytes.size() >= prefix.size() &&
           std::equal(prefix.begin(), prefix.end(), bytes.begin(),
                      [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; });
}

// Gaussians only (the fastest generation); checks the arrays and the exports. Returns the
// result, which main reads again after the model is gone.
static std::optional<recon::Result> test_generate_gaussians(const recon::Model& model,
                                                            const recon::Image& image) {
    std::vector<recon::Progress> reports;
    recon::RunOptions ro = quick(recon::Outputs::gaussians);
    ro.on_progress = [&](const recon::Progress& p) {
        reports.push_back(p);
        return true;
    };
    auto t0 = std::chrono::steady_clock::now();
    auto run = model.try_run(image, ro);
    double took = seconds_since(t0);
    CHECK_MSG(run.has_value(), run ? "" : run.error().what());
    if (!run) return std::nullopt;
    recon::Result result = std::move(*run);
    std::cout << "generation (Gaussians only, " << kSteps << " + " << kSteps
              << " steps): " << took << " s, " << reports.size() << " progress reports\n";

    // Progress: every stage of a run, in order, steps within totals.
    bool ordered = true, in_range = true, saw_sampler = false;
    for (std::size_t i = 0; i < reports.size(); ++i) {
        in_range &= reports[i].step <= reports[i].total;
        if (i > 0) ordered &= reports[i].stage >= reports[i - 1].stage;
        saw_sampler |= reports[i].stage == recon::Stage::sparse_structure &&
                       reports[i].total == kSteps;
    }
    CHECK(!reports.empty());
    CHECK(ordered);
    CHECK(in_range);
    CHECK(saw_sampler);
    CHECK(!reports.empty() && reports.front().stage == recon::Stage::preprocess);

    // Arrays.
    recon::Gaussians g = result.gaussians();
    std::cout << g.count << " Gaussians\n";
    CHECK(g.count > 0);
    CHECK(g.xyz.size() == 3 * g.count && g.features_dc.size() == 3 * g.count);
    CHECK(g.scaling.size() == 3 * g.count && g.rotation.size() == 4 * g.count);
    CHECK(g.opacity.size() == g.count);
    CHECK(all_finite(g.xyz) && all_finite(g.features_dc) && all_finite(g.scaling) &&
          all_finite(g.rotation) && all_finite(g.opacity));
    bool opacity_ok = true, scale_ok = true, unit_quaternions = true;
    for (float o : g.opacity) opacity_ok &= o >= 0.0f && o <= 1.0f;
    for (float s : g.scaling) scale_ok &= s > 0.0f;
    for (std::size_t i = 0; i < g.count; ++i) {
        const float* q = &g.rotation[4 * i];
        float n = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
        unit_quaternions &= std::fabs(n - 1.0f) < 1e-3f;
    }
    CHECK(opacity_ok);
    CHECK(scale_ok);
    CHECK(unit_quaternions);
    CHECK(result.gaussians().xyz.data() == g.xyz.data());  // borrowed, not copied

    // No mesh and no cameras in this result.
    std::string msg = EXPECT_ERROR(result.mesh(), recon::Status::invalid_argument);
    CHECK_MSG(contains(msg, "mesh"), msg);
    CHECK(contains(result.last_error(), "mesh"));
    CHECK(result.num_cameras() == 0);
    CHECK(result.cameras().empty());
    EXPECT_ERROR(result.camera(0), recon::Status::invalid_argument);
    EXPECT_ERROR(result.camera_matrices(0), recon::Status::invalid_argument);

    // Exports: a file and bytes of the same format agree.
    fs::path ply = g_tmp / "gaussians.ply";
    result.export_to(ply.string(), recon::ExportFormat::ply_gaussians);
    std::vector<std::uint8_t> file = read_file(ply);
    std::vector<std::uint8_t> bytes = result.export_bytes(recon::ExportFormat::ply_gaussians);
    CHECK(starts_with(file, "ply\n"));
    CHECK_MSG(file == bytes, "the PLY file and export_bytes differ");
    recon::Buffer buffer = result.export_buffer(recon::ExportFormat::ply_gaussians);
    CHECK(buffer.get() != nullptr && buffer.size() == bytes.size());
    CHECK(buffer.bytes().size() == buffer.size() && buffer.data() == buffer.bytes().data());
    CHECK(buffer.to_vector() == bytes);
    std::cout << "export: PLY of " << file.size() << " bytes\n";
    // Mesh formats need a mesh; a missing directory is an I/O error; nothing is written.
    msg = EXPECT_ERROR(result.export_bytes(recon::ExportFormat::glb),
                       recon::Status::invalid_argument);
    CHECK_MSG(contains(msg, "mesh"), msg);
    EXPECT_ERROR(result.export_bytes(recon::ExportFormat::obj), recon::Status::invalid_argument);
    fs::path nowhere = g_tmp / "no_such_dir" / "gaussians.ply";
    EXPECT_ERROR(result.export_to(nowhere.string(), recon::ExportFormat::ply_gaussians),
                 recon::Status::io);
    CHECK(!fs::exists(nowhere));
    return std::optional<recon::Result>(std::move(result));
}

// A mesh run: the mesh arrays and the mesh exports.
static void test_generate_mesh(const recon::Model& model, const recon::Image& image) {
    auto t0 = std::chrono::steady_clock::now();
    auto run = model.try_run(image, quick(recon::Outputs::mesh));
    double took = seconds_since(t0);
    CHECK_MSG(run.has_value(), run ? "" : run.error().what());
    if (!run) return;
    recon::Mesh m = run->mesh();
    std::cout << "generation (mesh only, " << kSteps << " + " << kSteps << " steps): " << took
              << " s; " << m.num_vertices << " vertices, " << m.num_faces << " triangles\n";
    CHECK(m.positions.size() == 3 * m.num_vertices);
    CHECK(m.indices.size() == 3 * m.num_faces);
    CHECK(m.colors.empty() || m.colors.size() == 3 * m.num_vertices);
    CHECK(all_finite(m.positions));
    bool indices_ok = true;
    for (std::uint32_t i : m.indices) indices_ok &= i < m.num_vertices;
    CHECK(indices_ok);
    EXPECT_ERROR(run->gaussians(), recon::Status::invalid_argument);
    fs::path obj = g_tmp / "mesh.obj";
    run->export_to(obj.string(), recon::ExportFormat::obj);
    CHECK(fs::exists(obj) && fs::file_size(obj) > 0);
    std::vector<std::uint8_t> ply = run->export_bytes(recon::ExportFormat::ply_mesh);
    CHECK(starts_with(ply, "ply\n"));
    recon::Buffer glb = run->export_buffer(recon::ExportFormat::glb);
    CHECK(glb.size() > 12 && starts_with(glb.to_vector(), "glTF"));
    fs::path glb_file = g_tmp / "mesh.glb";
    run->export_to(glb_file.string(), recon::ExportFormat::glb);
    CHECK(read_file(glb_file) == glb.to_vector());
    // TRELLIS estimates no poses: with cameras is the same file.
    CHECK(run->export_bytes(recon::ExportFormat::glb_with_cameras) == glb.to_vector());
    std::cout << "exports: OBJ " << fs::file_size(obj) << " bytes, PLY " << ply.size()
              << " bytes, GLB " << glb.size() << " bytes\n";
}

// A progress callback that returns false, and one that throws.
static void test_progress_cancels(const recon::Model& model, const recon::Image& image) {
    recon::RunOptions ro = quick(recon::Outputs::gaussians);
    int calls = 0;
    ro.on_progress = [&](const recon::Progress&) { return ++calls < 2; };
    std::string msg = EXPECT_ERROR(model.run(image, ro), recon::Status::cancelled);
    CHECK(calls == 2);
    CHECK_MSG(contains(msg, "progress callback"), msg);

    struct Stop {};
    ro.on_progress = [](const recon::Progress&) -> bool { throw Stop{}; };
    bool rethrown = false;
    try {
        model.run(image, ro);
    } catch (const Stop&) {
        rethrown = true;
    } catch (...) {
    }
    CHECK(rethrown);

    ro.on_progress = [](const recon::Progress&) -> bool {
        throw std::runtime_error("callback failed");
    };
    auto r = model.try_run(image, ro);
    CHECK(!r.has_value());
    if (!r) {
        CHECK(r.error().status() == recon::Status::cancelled);
        CHECK(r.error().message() == "callback failed");
    }
}

// Model::cancel() from another thread: the run (in a std::thread) is held in its progress
// callback once the sparse-structure sampler starts, until this thread has cancelled.
static void test_cancel_from_thread(const recon::Model& model, const recon::Image& image) {
    std::atomic<bool> sampler_started{false}, cancel_sent{false};
    std::optional<recon::Status> status;
    std::string message;
    recon::RunOptions ro = quick(recon::Outputs::gaussians);
    ro.on_progress = [&](const recon::Progress& p) {
        if (p.stage == recon::Stage::sparse_structure && !sampler_started.exchange(true)) {
            for (int i = 0; i < 60000 && !cancel_sent; ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return true;
    };
    auto t0 = std::chrono::steady_clock::now();
    std::thread worker([&] {
        try {
            model.run(image, ro);
            status = recon::Status::ok;
        } catch (const recon::Error& e) {
            status = e.status();
            message = e.message();
        }
    });
    while (!sampler_started && seconds_since(t0) < 120.0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(sampler_started);
    model.cancel();
    cancel_sent = true;
    worker.join();
    CHECK(status.has_value() && *status == recon::Status::cancelled);
    CHECK_MSG(contains(message, "recon_cancel"), message);
    std::cout << "cancelled from another thread after " << seconds_since(t0) << " s: " << message
              << "\n";

    // A cancel while nothing runs has no effect, and the model still works.
    model.cancel();
    auto after = model.try_run(image, quick(recon::Outputs::gaussians));
    CHECK_MSG(after.has_value(), after ? "" : after.error().what());
    if (after) CHECK(after->gaussians().count > 0);
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR IMAGE\n";
        return 2;
    }
    g_model_dir = argv[1];
    g_image_path = argv[2];
    g_tmp = fs::temp_directory_path() /
            ("recon_cpp_test_" + std::to_string(std::chrono::steady_clock::now()
                                                    .time_since_epoch()
                                                    .count()));
    fs::create_directories(g_tmp);
    auto t0 = std::chrono::steady_clock::now();

    try {
        test_versions();
        test_load_errors();
        test_logging();

        recon::Image image = recon::Image::from_file(g_image_path);
        CHECK(image.raw().size > 0 && image.raw().format == RECON_IMAGE_ENCODED);
        std::optional<recon::Result> kept;
        {
            recon::Model loaded = recon::Model::load(tiny_options());
            recon::Model model = std::move(loaded);  // ownership moves with the handle
            CHECK(loaded.get() == nullptr);
            test_introspection(model);
            test_run_validation(model);
            kept = test_generate_gaussians(model, image);
            test_generate_mesh(model, image);
            test_progress_cancels(model, image);
            test_cancel_from_thread(model, image);
        }
        // A result outlives its model.
        if (kept) CHECK(kept->gaussians().count > 0 && kept->export_bytes(
                                                            recon::ExportFormat::ply_gaussians)
                                                              .size() > 0);
    } catch (const std::exception& e) {
        check_impl(false, "unexpected exception", e.what(), __LINE__);
    }

    std::error_code ignored;
    fs::remove_all(g_tmp, ignored);
    std::cout << "total " << seconds_since(t0) << " s\n";
    std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
    return g_failed == 0 ? 0 : 1;
}
