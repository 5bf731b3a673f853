//! The cxx bridge of `cpp/cuda_graph.cpp`, compiled only when build.rs finds the CUDA runtime
//! headers (`recon_cuda_graph`); used by [`super::graph`] and [`super::alongside`]. In its own file without a `cfg` on
//! the bridge itself, because cxx-build skips a bridge module behind a custom `cfg`.

#[cxx::bridge(namespace = "recon::cuda_graph")]
pub mod ffi {
    unsafe extern "C++" {
        include!("recon/cpp/cuda_graph.h");

        type Graph;

        fn new_graph(device_index: i8) -> Result<UniquePtr<Graph>>;
        fn enter_side_stream(graph: Pin<&mut Graph>) -> Result<()>;
        fn leave_side_stream(graph: Pin<&mut Graph>) -> Result<()>;
        fn capture_begin(graph: Pin<&mut Graph>) -> Result<()>;
        fn capture_end(graph: Pin<&mut Graph>) -> Result<()>;
        fn replay(graph: Pin<&mut Graph>) -> Result<()>;

        type Alongside;

        fn new_alongside(device_index: i8) -> Result<UniquePtr<Alongside>>;
        fn enter_alongside(alongside: Pin<&mut Alongside>) -> Result<()>;
        fn leave_alongside(alongside: Pin<&mut Alongside>) -> Result<()>;
    }
}
