#pragma once
#include "CoreMinimal.h"
struct FProcMeshTangent {};
class UProceduralMeshComponent {
public:
    void CreateMeshSection(int32, const TArray<FVector>&, const TArray<int32>&, const TArray<FVector>&,
                           const TArray<FVector2D>&, const TArray<FColor>&, const TArray<FProcMeshTangent>&,
                           bool) {}
};
