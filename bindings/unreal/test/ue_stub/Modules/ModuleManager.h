#pragma once
#include "Modules/ModuleInterface.h"
#define IMPLEMENT_MODULE(Class, Name) static Class Name##ModuleInstance;
