#pragma once
#include "CoreMinimal.h"
struct FPaths {
    template <class... A>
    static FString Combine(A&&...) { return FString(); }
};
