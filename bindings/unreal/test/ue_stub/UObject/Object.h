#pragma once
#include "CoreMinimal.h"
class UObject {
public:
    virtual ~UObject() = default;
    virtual void BeginDestroy() {}
};
