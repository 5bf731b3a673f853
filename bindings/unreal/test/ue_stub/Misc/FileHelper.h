#pragma once
#include "CoreMinimal.h"
struct FFileHelper {
    static bool LoadFileToArray(TArray<uint8>&, const TCHAR*) { return false; }
};
