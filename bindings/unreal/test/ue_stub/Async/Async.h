#pragma once
#include "CoreMinimal.h"
namespace ENamedThreads { enum Type { GameThread }; }
template <class F>
void AsyncTask(ENamedThreads::Type, F&& function) { auto f = std::forward<F>(function); f(); }
