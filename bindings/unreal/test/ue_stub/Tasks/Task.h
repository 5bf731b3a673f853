#pragma once
#include "CoreMinimal.h"
namespace UE { namespace Tasks {
template <class F>
int Launch(const char*, F&& body) { auto f = std::forward<F>(body); f(); return 0; }
} }
