// A stand-in for the few Unreal Engine declarations the plugin's sources use, written from
// Unreal's documented signatures, so that `make check-ue-stub` can compile UReconModel and the
// module with g++ (-fsyntax-only) where no engine exists. It catches C++ mistakes in those
// files and their use of recon_core; it proves nothing about the real engine API, UHT or UBT.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using uint8 = std::uint8_t;
using int32 = std::int32_t;
using uint32 = std::uint32_t;
using int64 = std::int64_t;
using uint64 = std::uint64_t;
using TCHAR = char;

#define TEXT(x) x
#define TCHAR_TO_UTF8(x) (x)
#define UTF8_TO_TCHAR(x) (x)
#define RECON_API
#define UCLASS(...)
#define USTRUCT(...)
#define UPROPERTY(...)
#define UFUNCTION(...)
#define GENERATED_BODY() \
public:                  \
    using Super = UObject;
#define PLATFORM_WINDOWS 0
#define UE_SOURCE_LOCATION "stub"
// Unreal's assertion macro, which clashes with recon.hpp's check() members (ReconCore.cpp).
#define check(expr) ((void)(expr))

inline bool IsInGameThread() { return true; }

struct FMath {
    template <class T>
    static T Max(T a, T b) { return a < b ? b : a; }
};

class FString {
public:
    FString() = default;
    FString(const TCHAR* s) : s_(s ? s : "") {}
    const TCHAR* operator*() const { return s_.c_str(); }
    void Reset() { s_.clear(); }
    static FString Printf(const TCHAR* fmt, ...) { return FString(fmt); }

private:
    std::string s_;
};

template <class T>
class TArray {
public:
    int32 Num() const { return static_cast<int32>(v_.size()); }
    T* GetData() { return v_.data(); }
    const T* GetData() const { return v_.data(); }
    void SetNumUninitialized(int32 n) { v_.resize(static_cast<size_t>(n)); }
    void Append(const T* p, int32 n) { v_.insert(v_.end(), p, p + n); }
    T& operator[](int32 i) { return v_[static_cast<size_t>(i)]; }
    const T& operator[](int32 i) const { return v_[static_cast<size_t>(i)]; }
    typename std::vector<T>::const_iterator begin() const { return v_.begin(); }
    typename std::vector<T>::const_iterator end() const { return v_.end(); }

private:
    std::vector<T> v_;
};

template <class T>
T&& MoveTemp(T& v) { return static_cast<T&&>(v); }

namespace ESPMode { enum Type { ThreadSafe }; }

template <class T, ESPMode::Type M = ESPMode::ThreadSafe>
class TSharedRef {
public:
    explicit TSharedRef(std::shared_ptr<T> p) : p_(std::move(p)) {}
    T* operator->() const { return p_.get(); }
    T& operator*() const { return *p_; }

private:
    std::shared_ptr<T> p_;
};

template <class T, ESPMode::Type M = ESPMode::ThreadSafe>
class TSharedPtr {
public:
    bool IsValid() const { return p_ != nullptr; }
    T* operator->() const { return p_.get(); }

private:
    std::shared_ptr<T> p_;
};

template <class T, ESPMode::Type M = ESPMode::ThreadSafe, class... A>
TSharedRef<T, M> MakeShared(A&&... args) { return TSharedRef<T, M>(std::make_shared<T>(std::forward<A>(args)...)); }

template <class T>
class TWeakObjectPtr {
public:
    TWeakObjectPtr(T* p = nullptr) : p_(p) {}
    T* Get() const { return p_; }

private:
    T* p_;
};

struct FVector {
    double X = 0, Y = 0, Z = 0;
    FVector() = default;
    FVector(double x, double y, double z) : X(x), Y(y), Z(z) {}
};
struct FVector2D { double X = 0, Y = 0; };
struct FColor {
    uint8 B = 0, G = 0, R = 0, A = 0;  // BGRA in memory, as Unreal's
    FColor() = default;
    FColor(uint8 r, uint8 g, uint8 b, uint8 a = 255) : B(b), G(g), R(r), A(a) {}
};

struct FLogCategory {};
#define DECLARE_LOG_CATEGORY_EXTERN(Name, Verbosity, All) extern FLogCategory Name
#define DEFINE_LOG_CATEGORY(Name) FLogCategory Name
inline void UeLogStub(const FLogCategory&, const TCHAR*, ...) {}
#define UE_LOG(Category, Verbosity, Format, ...) UeLogStub(Category, Format, ##__VA_ARGS__)

#define DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(Name, T1, N1, T2, N2) \
    struct Name { void Broadcast(T1, T2) const {} }
#define DECLARE_DYNAMIC_MULTICAST_DELEGATE_ThreeParams(Name, T1, N1, T2, N2, T3, N3) \
    struct Name { void Broadcast(T1, T2, T3) const {} }
