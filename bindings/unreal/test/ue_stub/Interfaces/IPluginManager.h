#pragma once
#include "CoreMinimal.h"
class IPlugin {
public:
    FString GetBaseDir() const { return FString(); }
};
class IPluginManager {
public:
    static IPluginManager& Get() { static IPluginManager m; return m; }
    TSharedPtr<IPlugin> FindPlugin(const TCHAR*) { return TSharedPtr<IPlugin>(); }
};
