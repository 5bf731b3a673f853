#include "ReconModule.h"

#include "HAL/PlatformProcess.h"
#include "Interfaces/IPluginManager.h"
#include "Misc/Paths.h"
#include "Modules/ModuleManager.h"

DEFINE_LOG_CATEGORY(LogRecon);

void FReconModule::StartupModule()
{
#if PLATFORM_WINDOWS
	// recon.dll is delay-loaded (Recon.Build.cs): load it, and let it find libtorch's DLLs, from
	// the plugin's binary folder where RuntimeDependencies put them.
	TSharedPtr<IPlugin> Plugin = IPluginManager::Get().FindPlugin(TEXT("Recon"));
	if (Plugin.IsValid())
	{
		const FString BinDir = FPaths::Combine(Plugin->GetBaseDir(), TEXT("Binaries"), TEXT("Win64"));
		FPlatformProcess::PushDllDirectory(*BinDir);
		LibraryHandle = FPlatformProcess::GetDllHandle(*FPaths::Combine(BinDir, TEXT("recon.dll")));
		FPlatformProcess::PopDllDirectory(*BinDir);
	}
	if (LibraryHandle == nullptr)
	{
		UE_LOG(LogRecon, Error, TEXT("recon.dll could not be loaded; see bindings/unreal/README.md"));
	}
#endif
}

void FReconModule::ShutdownModule()
{
	if (LibraryHandle != nullptr)
	{
		FPlatformProcess::FreeDllHandle(LibraryHandle);
		LibraryHandle = nullptr;
	}
}

IMPLEMENT_MODULE(FReconModule, Recon)
