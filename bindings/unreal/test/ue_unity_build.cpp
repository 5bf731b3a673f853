// What UnrealBuildTool's unity build would compile: the module's .cpp files in one translation
// unit, Unreal headers (and their `check` macro) first. Compiled against test/ue_stub only.
#include "../Source/Recon/Private/ReconModule.cpp"
#include "../Source/Recon/Private/ReconModel.cpp"
#include "../Source/Recon/Private/ReconCore.cpp"
