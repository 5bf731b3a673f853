// ReconCore.cpp — see ReconCore.h. Built on bindings/cpp/recon.hpp (the RAII C++ wrapper of
// recon.h); only this file sees it.

// Unreal defines `check` as a macro, which would rewrite recon.hpp's check() members when this
// file is compiled after Unreal headers (unity builds): hide it while recon.hpp is read.
#pragma push_macro("check")
#undef check
#include "recon.hpp"
#pragma pop_macro("check")

#include "ReconCore.h"

#include <cmath>
#include <exception>
#include <new>
#include <utility>

namespace recon_core {

namespace {

// Runs `body`, turning any exception into *error; no exception leaves the core.
template <class F>
bool guarded(Error* error, F&& body) {
    Error local;
    Error& out = error ? *error : local;
    out = Error{};
    try {
        body();
        return true;
    } catch (const recon::Error& e) {
        out.status = static_cast<int>(e.status());
        out.message = e.message().empty() ? std::string(recon::status_string(e.status()))
                                          : e.message();
    } catch (const std::bad_alloc&) {
        out.status = RECON_ERR_OUT_OF_MEMORY;
        out.message = "out of memory";
    } catch (const std::exception& e) {
        // What a progress callback threw: it cancelled the run.
        out.status = RECON_ERR_CANCELLED;
        out.message = e.what();
    } catch (...) {
        out.status = RECON_ERR_CANCELLED;
        out.message = "the progress callback threw";
    }
    return false;
}

recon::Image to_recon_image(const ImageView& view) {
    switch (view.format) {
        case ImageView::Format::rgb8:
            return recon::Image::rgb8(view.data, view.size, view.width, view.height, view.stride);
        case ImageView::Format::rgba8:
            return recon::Image::rgba8(view.data, view.size, view.width, view.height, view.stride);
        case ImageView::Format::encoded:
        default:
            return recon::Image::encoded(view.data, view.size);
    }
}

}  // namespace

struct Session::Impl {
    explicit Impl(recon::Model m) : model(std::move(m)) {}
    recon::Model model;
};

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Session::~Session() = default;

std::shared_ptr<Session> Session::Load(const std::string& model, int device, LogFn log,
                                       Error* error) {
    std::shared_ptr<Session> session;
    guarded(error, [&] {
        recon::LoadOptions options;
        options.model = model;
        options.device = device;
        if (log) {
            options.on_log = [log = std::move(log)](recon::LogLevel level, std::string_view msg) {
                log(static_cast<int>(level), std::string(msg));
            };
        }
        auto impl = std::make_unique<Impl>(recon::Model::load(std::move(options)));
        session = std::shared_ptr<Session>(new Session(std::move(impl)));
    });
    return session;
}

std::optional<UnrealMesh> Session::Generate(const std::vector<ImageView>& images,
                                            const Options& options,
                                            const std::atomic<bool>* cancel,
                                            const ProgressFn& progress, Error* error) const {
    std::optional<UnrealMesh> mesh;
    guarded(error, [&] {
        std::vector<recon::Image> views;
        views.reserve(images.size());
        for (const ImageView& view : images) views.push_back(to_recon_image(view));
        recon::RunOptions run;
        run.outputs = recon::Outputs::mesh;
        if (options.seed) run.seed = *options.seed;
        if (options.sparse_structure_steps) run.sparse_structure_steps = options.sparse_structure_steps;
        if (options.slat_steps) run.slat_steps = options.slat_steps;
        if (progress || cancel) {
            run.on_progress = [&](const recon::Progress& p) {
                if (cancel && cancel->load()) return false;
                return progress ? progress(static_cast<int>(p.stage), p.step, p.total) : true;
            };
        }
        recon::Result result = impl_->model.run(views, run);
        if (!options.glb_path.empty()) result.export_to(options.glb_path, recon::ExportFormat::glb);
        recon::Mesh m = result.mesh();
        mesh = to_unreal_mesh(m.positions.data(), m.colors.empty() ? nullptr : m.colors.data(),
                              m.num_vertices, m.indices.data(), m.num_faces);
    });
    return mesh;
}

void Session::Cancel() const { impl_->model.cancel(); }

std::string Session::PipelineName() const { return std::string(impl_->model.pipeline_name()); }

UnrealMesh to_unreal_mesh(const float* positions, const float* colors, std::size_t num_vertices,
                          const std::uint32_t* indices, std::size_t num_faces) {
    UnrealMesh out;
    out.positions.resize(3 * num_vertices);
    for (std::size_t i = 0; i < num_vertices; ++i) {
        const float* p = positions + 3 * i;
        out.positions[3 * i + 0] = 100.0f * p[1];
        out.positions[3 * i + 1] = 100.0f * p[0];
        out.positions[3 * i + 2] = 100.0f * p[2];
    }
    if (colors) {
        out.colors.resize(4 * num_vertices);
        for (std::size_t i = 0; i < num_vertices; ++i) {
            for (int k = 0; k < 3; ++k) {
                float c = colors[3 * i + k];
                c = c < 0.0f ? 0.0f : (c > 1.0f ? 1.0f : c);
                out.colors[4 * i + k] = static_cast<std::uint8_t>(c * 255.0f + 0.5f);
            }
            out.colors[4 * i + 3] = 255;
        }
    }
    out.triangles.resize(3 * num_faces);
    for (std::size_t i = 0; i < 3 * num_faces; ++i)
        out.triangles[i] = static_cast<std::int32_t>(indices[i]);

    // Area-weighted vertex normals with Unreal's face normal (P1 - P2) x (P0 - P2), the rule
    // UKismetProceduralMeshLibrary::CalculateTangentsForMesh uses.
    out.normals.assign(3 * num_vertices, 0.0f);
    const float* v = out.positions.data();
    for (std::size_t f = 0; f < num_faces; ++f) {
        const std::int32_t* t = &out.triangles[3 * f];
        const float* p0 = v + 3 * t[0];
        const float* p1 = v + 3 * t[1];
        const float* p2 = v + 3 * t[2];
        const float a[3] = {p1[0] - p2[0], p1[1] - p2[1], p1[2] - p2[2]};
        const float b[3] = {p0[0] - p2[0], p0[1] - p2[1], p0[2] - p2[2]};
        const float n[3] = {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                            a[0] * b[1] - a[1] * b[0]};
        for (int c = 0; c < 3; ++c)
            for (int k = 0; k < 3; ++k) out.normals[3 * t[c] + k] += n[k];
    }
    for (std::size_t i = 0; i < num_vertices; ++i) {
        float* n = &out.normals[3 * i];
        const float length = std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
        if (length > 0.0f) {
            n[0] /= length;
            n[1] /= length;
            n[2] /= length;
        } else {
            n[2] = 1.0f;  // an isolated vertex: any unit vector
        }
    }
    return out;
}

std::string LibraryVersion() {
    return "recon " + std::string(recon::version()) + ", ABI " +
           std::to_string(recon::abi_version());
}

}  // namespace recon_core
