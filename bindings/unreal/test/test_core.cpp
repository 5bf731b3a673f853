// test_core.cpp — tests the Unreal plugin's engine-independent core (Source/Recon/Private/
// ReconCore.{h,cpp}) against librecon with the tiny model, with no Unreal Engine:
//
//     test_core MODEL_DIR IMAGE
//
// Checks the TRELLIS → Unreal frame conversion (a cube's faces and normals stay outward under
// Unreal's triangle-normal rule), loading, a mesh generation with progress and a GLB export,
// cancellation from another thread, a cancel flag set before the run, and a progress callback
// stopping a run. The last line printed is "N passed, M failed"; the exit status is nonzero
// when M > 0.
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "ReconCore.h"
#include "recon.h"

namespace fs = std::filesystem;

static int g_passed = 0;
static int g_failed = 0;

static void check_impl(bool ok, const char* what, const std::string& detail, int line) {
    if (ok) {
        ++g_passed;
        return;
    }
    ++g_failed;
    std::cerr << "FAIL test_core.cpp:" << line << ": " << what << (detail.empty() ? "" : " -- ")
              << detail << std::endl;
}

#define CHECK(cond) check_impl(static_cast<bool>(cond), #cond, std::string(), __LINE__)
#define CHECK_MSG(cond, msg) check_impl(static_cast<bool>(cond), #cond, (msg), __LINE__)

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static std::vector<std::uint8_t> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

using Vec3 = std::array<double, 3>;

static Vec3 cross(const Vec3& a, const Vec3& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
static Vec3 sub(const float* a, const float* b) { return {a[0] - b[0], a[1] - b[1], a[2] - b[2]}; }
static double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// Signed volume of a triangle mesh whose front faces are where (P1-P0) x (P2-P0) points
// (right-handed rule, `sign` +1) or where (P1-P2) x (P0-P2) points (Unreal's rule, `sign` -1):
// positive when the faces point outward.
static double signed_volume(const float* v, const std::int64_t* idx, std::size_t faces, double sign) {
    double volume = 0.0;
    for (std::size_t f = 0; f < faces; ++f) {
        const float* a = v + 3 * idx[3 * f];
        const float* b = v + 3 * idx[3 * f + 1];
        const float* c = v + 3 * idx[3 * f + 2];
        volume += dot(Vec3{a[0], a[1], a[2]}, cross(Vec3{b[0], b[1], b[2]}, Vec3{c[0], c[1], c[2]}));
    }
    return sign * volume / 6.0;
}

// A unit cube in TRELLIS's frame, faces counter-clockwise seen from outside (right-handed).
static void test_frame() {
    const float corners[8 * 3] = {-0.5f, -0.5f, -0.5f, 0.5f, -0.5f, -0.5f, 0.5f, 0.5f, -0.5f,
                                  -0.5f, 0.5f,  -0.5f, -0.5f, -0.5f, 0.5f, 0.5f, -0.5f, 0.5f,
                                  0.5f,  0.5f,  0.5f,  -0.5f, 0.5f,  0.5f};
    const std::uint32_t faces[12 * 3] = {0, 2, 1, 0, 3, 2,   // bottom (-Z)
                                         4, 5, 6, 4, 6, 7,   // top (+Z)
                                         0, 1, 5, 0, 5, 4,   // front (-Y)
                                         2, 3, 7, 2, 7, 6,   // back (+Y)
                                         1, 2, 6, 1, 6, 5,   // right (+X)
                                         3, 0, 4, 3, 4, 7};  // left (-X)
    const float colors[8 * 3] = {0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0.5f, 0.5f, 0.5f};
    std::vector<std::int64_t> idx(std::begin(faces), std::end(faces));
    CHECK(signed_volume(corners, idx.data(), 12, 1.0) > 0.99);  // the fixture is outward

    recon_core::UnrealMesh m = recon_core::to_unreal_mesh(corners, colors, 8, faces, 12);
    CHECK(m.num_vertices() == 8 && m.num_faces() == 12);
    // 100 * (y, x, z): TRELLIS vertex 1 (0.5, -0.5, -0.5) -> (-50, 50, -50).
    CHECK(m.positions[3] == -50.0f && m.positions[4] == 50.0f && m.positions[5] == -50.0f);
    // Index order kept.
    bool same_order = true;
    for (int i = 0; i < 36; ++i) same_order &= m.triangles[i] == static_cast<std::int32_t>(faces[i]);
    CHECK(same_order);
    // Unreal's rule sees every face outward, and every vertex normal points away from the centre.
    std::vector<std::int64_t> tri(m.triangles.begin(), m.triangles.end());
    double volume = signed_volume(m.positions.data(), tri.data(), 12, -1.0);
    CHECK_MSG(std::fabs(volume - 1e6) < 1.0, std::to_string(volume));  // 100 cm cube, outward
    bool outward = true, unit = true;
    for (int i = 0; i < 8; ++i) {
        Vec3 n{m.normals[3 * i], m.normals[3 * i + 1], m.normals[3 * i + 2]};
        Vec3 p{m.positions[3 * i], m.positions[3 * i + 1], m.positions[3 * i + 2]};
        outward &= dot(n, p) > 0.0;
        unit &= std::fabs(dot(n, n) - 1.0) < 1e-5;
    }
    CHECK(outward);
    CHECK(unit);
    // Each face normal by Unreal's rule is the right-handed normal carried over as (y, x, z).
    bool mapped = true;
    for (int f = 0; f < 12; ++f) {
        const float* t0 = corners + 3 * faces[3 * f];
        const float* t1 = corners + 3 * faces[3 * f + 1];
        const float* t2 = corners + 3 * faces[3 * f + 2];
        Vec3 rh = cross(sub(t1, t0), sub(t2, t0));
        const float* u0 = m.positions.data() + 3 * m.triangles[3 * f];
        const float* u1 = m.positions.data() + 3 * m.triangles[3 * f + 1];
        const float* u2 = m.positions.data() + 3 * m.triangles[3 * f + 2];
        Vec3 ue = cross(sub(u1, u2), sub(u0, u2));
        Vec3 expect{rh[1] * 1e4, rh[0] * 1e4, rh[2] * 1e4};
        for (int k = 0; k < 3; ++k) mapped &= std::fabs(ue[k] - expect[k]) < 1e-2;
    }
    CHECK(mapped);
    CHECK(m.colors.size() == 32 && m.colors[4] == 255 && m.colors[7] == 255 && m.colors[28] == 128);
    recon_core::UnrealMesh no_colors = recon_core::to_unreal_mesh(corners, nullptr, 8, faces, 12);
    CHECK(no_colors.colors.empty());
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR IMAGE\n";
        return 2;
    }
    const std::string model_dir = argv[1];
    const std::vector<std::uint8_t> png = read_file(argv[2]);
    const fs::path tmp = fs::temp_directory_path() / ("recon_unreal_core_" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    const auto t_total = std::chrono::steady_clock::now();

    std::cout << recon_core::LibraryVersion() << std::endl;
    CHECK(!png.empty());
    test_frame();

    // Load errors.
    recon_core::Error error;
    auto missing = recon_core::Session::Load((tmp / "no_such_model").string(), RECON_DEVICE_CPU, {}, &error);
    CHECK(!missing);
    CHECK_MSG(error.status == RECON_ERR_IO, error.message);
    CHECK(error.message.find("no_such_model") != std::string::npos);

    // Load with a log sink.
    int log_messages = 0;
    auto session = recon_core::Session::Load(
        model_dir, RECON_DEVICE_CPU, [&](int level, const std::string&) { log_messages += level >= 1; }, &error);
    CHECK_MSG(session != nullptr, error.message);
    if (!session) {
        std::cout << g_passed << " passed, " << g_failed + 1 << " failed" << std::endl;
        return 1;
    }
    CHECK(log_messages > 0);
    CHECK(session->PipelineName() == "TrellisImageTo3DPipeline");

    recon_core::ImageView view;
    view.format = recon_core::ImageView::Format::encoded;
    view.data = png.data();
    view.size = png.size();
    recon_core::Options options;
    options.seed = 1;
    options.sparse_structure_steps = 2;
    options.slat_steps = 2;

    // Refusals: no images.
    auto none = session->Generate({}, options, nullptr, {}, &error);
    CHECK(!none);
    CHECK_MSG(error.status == RECON_ERR_INVALID_ARGUMENT, error.message);

    // A mesh, with progress and a GLB.
    {
        int reports = 0, last_stage = 0;
        bool ordered = true;
        recon_core::Options with_glb = options;
        with_glb.glb_path = (tmp / "asset.glb").string();
        const auto t0 = std::chrono::steady_clock::now();
        auto mesh = session->Generate(
            {view}, with_glb, nullptr,
            [&](int stage, std::uint32_t, std::uint32_t) {
                ordered &= stage >= last_stage;
                last_stage = stage;
                ++reports;
                return true;
            },
            &error);
        std::printf("mesh generation (2 + 2 steps): %.2f s\n", seconds_since(t0));
        CHECK_MSG(mesh.has_value(), error.message);
        CHECK(reports > 0 && ordered && last_stage == RECON_STAGE_DECODE);
        if (mesh) {
            const std::size_t nv = mesh->num_vertices(), nf = mesh->num_faces();
            CHECK(nv > 0 && nf > 0);
            CHECK(mesh->normals.size() == 3 * nv);
            CHECK(mesh->colors.empty() || mesh->colors.size() == 4 * nv);
            bool in_range = true;
            for (std::int32_t i : mesh->triangles) in_range &= i >= 0 && static_cast<std::size_t>(i) < nv;
            CHECK(in_range);
            bool inside = true;  // [-0.5, 0.5]^3 m is [-50, 50]^3 cm
            for (float p : mesh->positions) inside &= std::fabs(p) <= 60.0f;
            CHECK(inside);
            std::vector<std::int64_t> tri(mesh->triangles.begin(), mesh->triangles.end());
            double volume = signed_volume(mesh->positions.data(), tri.data(), nf, -1.0);
            std::printf("mesh: %zu vertices, %zu triangles, colours %s, signed volume %.1f cm^3 (Unreal's rule)\n",
                        nv, nf, mesh->colors.empty() ? "no" : "yes", volume);
            CHECK_MSG(volume > 0.0, "faces point outward in Unreal's frame");
            std::vector<std::uint8_t> glb = read_file(with_glb.glb_path);
            CHECK(glb.size() > 20 && std::memcmp(glb.data(), "glTF", 4) == 0);
        }
    }

    // Cancel from another thread while the run is held in its progress callback.
    {
        std::atomic<bool> started{false}, sent{false};
        std::thread canceller([&] {
            for (int i = 0; i < 120000 && !started.load(); ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            session->Cancel();
            sent.store(true);
        });
        int max_stage = 0;
        auto mesh = session->Generate(
            {view}, options, nullptr,
            [&](int stage, std::uint32_t, std::uint32_t) {
                max_stage = stage > max_stage ? stage : max_stage;
                if (stage == RECON_STAGE_SPARSE_STRUCTURE && !started.load()) {
                    started.store(true);
                    for (int i = 0; i < 60000 && !sent.load(); ++i)
                        std::this_thread::sleep_for(std::chrono::milliseconds(1));
                }
                return true;
            },
            &error);
        canceller.join();
        CHECK(!mesh);
        CHECK_MSG(error.status == RECON_ERR_CANCELLED, error.message);
        CHECK_MSG(error.message.find("recon_cancel") != std::string::npos, error.message);
        CHECK(max_stage == RECON_STAGE_SPARSE_STRUCTURE);
        std::cout << "cancelled from another thread: " << error.message << std::endl;
    }

    // A cancel flag set before the run stops it at its first report.
    {
        std::atomic<bool> cancel{true};
        int reports = 0;
        auto mesh = session->Generate({view}, options, &cancel,
                                      [&](int, std::uint32_t, std::uint32_t) { return ++reports > 0; }, &error);
        CHECK(!mesh);
        CHECK_MSG(error.status == RECON_ERR_CANCELLED, error.message);
        CHECK(reports == 0);
    }

    // The model still works: a run stopped by its own progress callback once conditioned.
    {
        std::atomic<bool> cancel{false};
        auto mesh = session->Generate(
            {view}, options, &cancel,
            [&](int stage, std::uint32_t, std::uint32_t) { return stage < RECON_STAGE_CONDITION; }, &error);
        CHECK(!mesh);
        CHECK_MSG(error.status == RECON_ERR_CANCELLED, error.message);
        CHECK_MSG(error.message.find("progress callback") != std::string::npos, error.message);
    }

    // A progress callback that throws cancels the run; the exception does not escape the core.
    {
        auto mesh = session->Generate(
            {view}, options, nullptr,
            [&](int, std::uint32_t, std::uint32_t) -> bool { throw std::runtime_error("from progress"); },
            &error);
        CHECK(!mesh);
        CHECK(error.status == RECON_ERR_CANCELLED && error.message == "from progress");
    }

    session.reset();
    std::error_code ec;
    fs::remove_all(tmp, ec);
    std::printf("total %.1f s\n", seconds_since(t_total));
    std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
    return g_failed > 0 ? 1 : 0;
}
