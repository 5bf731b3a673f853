// The Recon module: owns the native library handle where it must be loaded by hand (Windows
// delay-load) and the LogRecon category.
#pragma once

#include "CoreMinimal.h"
#include "Modules/ModuleInterface.h"

RECON_API DECLARE_LOG_CATEGORY_EXTERN(LogRecon, Log, All);

class FReconModule : public IModuleInterface
{
public:
	virtual void StartupModule() override;
	virtual void ShutdownModule() override;

private:
	void* LibraryHandle = nullptr;
};
