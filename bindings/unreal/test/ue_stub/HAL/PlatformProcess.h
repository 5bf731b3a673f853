#pragma once
#include "CoreMinimal.h"
struct FPlatformProcess {
    static void PushDllDirectory(const TCHAR*) {}
    static void PopDllDirectory(const TCHAR*) {}
    static void* GetDllHandle(const TCHAR*) { return nullptr; }
    static void FreeDllHandle(void*) {}
};
