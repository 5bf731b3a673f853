// smoke.cpp — an installed recon.hpp in use: versions, a load error, a model load.
//
//     smoke_cpp MODEL_DIR
//
// Prints "ok" and exits 0 when all went as expected.
#include <iostream>

#include <recon.hpp>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: smoke_cpp MODEL_DIR\n";
        return 2;
    }
    try {
        recon::check_abi();
        std::cout << "recon " << recon::version() << ", ABI " << recon::abi_version() << "\n";
        recon::LoadOptions bad;
        bad.model = "";
        auto failed = recon::Model::try_load(bad);
        if (failed || failed.error().status() != recon::Status::invalid_argument) {
            std::cerr << "an empty model name should be an invalid argument\n";
            return 1;
        }
        recon::LoadOptions lo;
        lo.model = argv[1];
        lo.device = recon::device_cpu;
        lo.offline = true;
        recon::Model model = recon::Model::load(lo);
        std::cout << "loaded " << model.pipeline_name() << " (" << model.num_networks()
                  << " networks)\nok" << std::endl;
        return 0;
    } catch (const recon::Error& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
}
