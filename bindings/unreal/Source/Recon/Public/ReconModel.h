// UReconModel: a recon model for Blueprints and C++. Load it, then Run* generates a mesh on a
// background task (UE::Tasks) and writes it into a UProceduralMeshComponent section on the
// game thread, in Unreal's frame (centimetres, Z up, left-handed; see ReconCore.h and README).
// Progress and completion are broadcast on the game thread, where Load, Run* and Cancel are called.
#pragma once

#include "CoreMinimal.h"
#include "UObject/Object.h"

#include <atomic>
#include <memory>

#include "ReconModel.generated.h"

class UProceduralMeshComponent;
struct FReconJob;

namespace recon_core
{
class Session;
}

/** Settings of one generation; 0 steps keep the model's (pipeline.json's) values. */
USTRUCT(BlueprintType)
struct RECON_API FReconRunSettings
{
	GENERATED_BODY()

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon")
	int64 Seed = 42;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon", meta = (ClampMin = "0"))
	int32 SparseStructureSteps = 0;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon", meta = (ClampMin = "0"))
	int32 SlatSteps = 0;

	/** The ProceduralMeshComponent section the mesh replaces. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon", meta = (ClampMin = "0"))
	int32 SectionIndex = 0;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon")
	bool bCreateCollision = false;

	/** When set, the result is also written there as a GLB file. */
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "Recon")
	FString GlbPath;
};

DECLARE_DYNAMIC_MULTICAST_DELEGATE_ThreeParams(FReconProgressSignature, int32, Stage, int32, Step, int32, Total);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FReconFinishedSignature, bool, bSucceeded, const FString&, Error);

UCLASS(BlueprintType)
class RECON_API UReconModel : public UObject
{
	GENERATED_BODY()

public:
	/**
	 * Loads a model directory (pipeline.json + ckpts/) or a Hugging Face repo id. Blocks the
	 * calling thread. Device: -2 first CUDA device else CPU, -1 CPU, >= 0 that CUDA device.
	 */
	UFUNCTION(BlueprintCallable, Category = "Recon")
	bool Load(const FString& ModelPath, int32 Device, FString& OutError);

	UFUNCTION(BlueprintPure, Category = "Recon")
	bool IsLoaded() const;

	/** Starts a generation from image files (PNG/JPEG/WebP cut-outs of one object). */
	UFUNCTION(BlueprintCallable, Category = "Recon")
	bool RunFromFiles(const TArray<FString>& ImagePaths, UProceduralMeshComponent* Target,
	                  const FReconRunSettings& Settings, FString& OutError);

	/** Starts a generation from one RGBA cut-out (rows top to bottom, e.g. a texture's mip 0). */
	bool RunFromPixels(const TArray<FColor>& Pixels, int32 Width, int32 Height, UProceduralMeshComponent* Target,
	                   const FReconRunSettings& Settings, FString& OutError);

	/** Stops the running generation (game thread); OnFinished then reports the cancellation. */
	UFUNCTION(BlueprintCallable, Category = "Recon")
	void Cancel();

	UFUNCTION(BlueprintPure, Category = "Recon")
	bool IsRunning() const { return bRunning; }

	/** Stage (1 preprocess .. 5 decode), step of total; on the game thread. */
	UPROPERTY(BlueprintAssignable, Category = "Recon")
	FReconProgressSignature OnProgress;

	/** On the game thread, after the mesh section was written (or the run failed). */
	UPROPERTY(BlueprintAssignable, Category = "Recon")
	FReconFinishedSignature OnFinished;

	virtual void BeginDestroy() override;

private:
	bool Launch(TSharedRef<FReconJob, ESPMode::ThreadSafe> Job, UProceduralMeshComponent* Target,
	            const FReconRunSettings& Settings, FString& OutError);

	// Shared with the running task, which keeps the native model alive until it returns.
	std::shared_ptr<recon_core::Session> Session;
	std::shared_ptr<std::atomic<bool>> CancelFlag;
	bool bRunning = false;
};
