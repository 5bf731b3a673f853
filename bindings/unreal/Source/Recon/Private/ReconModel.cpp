#include "ReconModel.h"

#include "Async/Async.h"
#include "Misc/FileHelper.h"
#include "ProceduralMeshComponent.h"
#include "ReconModule.h"
#include "Tasks/Task.h"

#include "ReconCore.h"

#include <string>
#include <utility>
#include <vector>

/** What one generation reads: the input bytes, owned here, and their views. */
struct FReconJob
{
	std::vector<std::vector<uint8>> Buffers;
	std::vector<recon_core::ImageView> Views;
};

namespace
{
FString ToFString(const std::string& Utf8)
{
	return FString(UTF8_TO_TCHAR(Utf8.c_str()));
}
} // namespace

bool UReconModel::Load(const FString& ModelPath, int32 Device, FString& OutError)
{
	if (bRunning)
	{
		OutError = TEXT("a generation is running");
		return false;
	}
	recon_core::Error Error;
	std::shared_ptr<recon_core::Session> Loaded = recon_core::Session::Load(
		std::string(TCHAR_TO_UTF8(*ModelPath)), Device,
		[](int Level, const std::string& Message)
		{
			// Called on the loading / running thread; UE_LOG is thread-safe.
			const FString Text = ToFString(Message);
			if (Level <= 1)
			{
				UE_LOG(LogRecon, Error, TEXT("%s"), *Text);
			}
			else if (Level == 2)
			{
				UE_LOG(LogRecon, Warning, TEXT("%s"), *Text);
			}
			else
			{
				UE_LOG(LogRecon, Log, TEXT("%s"), *Text);
			}
		},
		&Error);
	if (!Loaded)
	{
		OutError = ToFString(Error.message);
		return false;
	}
	Session = std::move(Loaded);
	OutError.Reset();
	return true;
}

bool UReconModel::IsLoaded() const
{
	return Session != nullptr;
}

bool UReconModel::RunFromFiles(const TArray<FString>& ImagePaths, UProceduralMeshComponent* Target,
                               const FReconRunSettings& Settings, FString& OutError)
{
	TSharedRef<FReconJob, ESPMode::ThreadSafe> Job = MakeShared<FReconJob, ESPMode::ThreadSafe>();
	for (const FString& Path : ImagePaths)
	{
		TArray<uint8> Bytes;
		if (!FFileHelper::LoadFileToArray(Bytes, *Path))
		{
			OutError = FString::Printf(TEXT("cannot read %s"), *Path);
			return false;
		}
		Job->Buffers.emplace_back(Bytes.GetData(), Bytes.GetData() + Bytes.Num());
	}
	for (const std::vector<uint8>& Buffer : Job->Buffers)
	{
		recon_core::ImageView View;
		View.format = recon_core::ImageView::Format::encoded;
		View.data = Buffer.data();
		View.size = Buffer.size();
		Job->Views.push_back(View);
	}
	return Launch(Job, Target, Settings, OutError);
}

bool UReconModel::RunFromPixels(const TArray<FColor>& Pixels, int32 Width, int32 Height,
                                UProceduralMeshComponent* Target, const FReconRunSettings& Settings,
                                FString& OutError)
{
	if (Width <= 0 || Height <= 0 || Pixels.Num() != Width * Height)
	{
		OutError = TEXT("Pixels must hold Width x Height colours");
		return false;
	}
	TSharedRef<FReconJob, ESPMode::ThreadSafe> Job = MakeShared<FReconJob, ESPMode::ThreadSafe>();
	// FColor is BGRA in memory; recon_image wants RGBA.
	std::vector<uint8> Rgba(4 * static_cast<size_t>(Pixels.Num()));
	for (int32 I = 0; I < Pixels.Num(); ++I)
	{
		Rgba[4 * I + 0] = Pixels[I].R;
		Rgba[4 * I + 1] = Pixels[I].G;
		Rgba[4 * I + 2] = Pixels[I].B;
		Rgba[4 * I + 3] = Pixels[I].A;
	}
	Job->Buffers.push_back(std::move(Rgba));
	recon_core::ImageView View;
	View.format = recon_core::ImageView::Format::rgba8;
	View.data = Job->Buffers.back().data();
	View.size = Job->Buffers.back().size();
	View.width = static_cast<uint32>(Width);
	View.height = static_cast<uint32>(Height);
	Job->Views.push_back(View);
	return Launch(Job, Target, Settings, OutError);
}

bool UReconModel::Launch(TSharedRef<FReconJob, ESPMode::ThreadSafe> Job, UProceduralMeshComponent* Target,
                         const FReconRunSettings& Settings, FString& OutError)
{
	check(IsInGameThread());
	if (!Session)
	{
		OutError = TEXT("no model loaded: call Load first");
		return false;
	}
	if (bRunning)
	{
		OutError = TEXT("a generation is already running");
		return false;
	}
	recon_core::Options Options;
	Options.seed = static_cast<uint64>(Settings.Seed);
	Options.sparse_structure_steps = static_cast<uint32>(FMath::Max(0, Settings.SparseStructureSteps));
	Options.slat_steps = static_cast<uint32>(FMath::Max(0, Settings.SlatSteps));
	Options.glb_path = std::string(TCHAR_TO_UTF8(*Settings.GlbPath));

	CancelFlag = std::make_shared<std::atomic<bool>>(false);
	bRunning = true;
	OutError.Reset();

	TWeakObjectPtr<UReconModel> WeakThis(this);
	TWeakObjectPtr<UProceduralMeshComponent> WeakTarget(Target);
	std::shared_ptr<recon_core::Session> RunSession = Session;
	std::shared_ptr<std::atomic<bool>> RunCancel = CancelFlag;
	const int32 SectionIndex = Settings.SectionIndex;
	const bool bCollision = Settings.bCreateCollision;

	UE::Tasks::Launch(UE_SOURCE_LOCATION, [Job, Options, WeakThis, WeakTarget, RunSession, RunCancel, SectionIndex, bCollision]()
	{
		recon_core::Error Error;
		std::optional<recon_core::UnrealMesh> Mesh = RunSession->Generate(
			Job->Views, Options, RunCancel.get(),
			[WeakThis](int Stage, uint32_t Step, uint32_t Total)
			{
				AsyncTask(ENamedThreads::GameThread, [WeakThis, Stage, Step, Total]()
				{
					if (UReconModel* Self = WeakThis.Get())
					{
						Self->OnProgress.Broadcast(Stage, static_cast<int32>(Step), static_cast<int32>(Total));
					}
				});
				return true;
			},
			&Error);

		// The engine arrays are built here, off the game thread.
		TArray<FVector> Vertices;
		TArray<FVector> Normals;
		TArray<FColor> Colors;
		TArray<int32> Triangles;
		if (Mesh)
		{
			const int32 NumVertices = static_cast<int32>(Mesh->num_vertices());
			Vertices.SetNumUninitialized(NumVertices);
			Normals.SetNumUninitialized(NumVertices);
			for (int32 I = 0; I < NumVertices; ++I)
			{
				const float* P = &Mesh->positions[3 * I];
				const float* N = &Mesh->normals[3 * I];
				Vertices[I] = FVector(P[0], P[1], P[2]);
				Normals[I] = FVector(N[0], N[1], N[2]);
			}
			if (!Mesh->colors.empty())
			{
				Colors.SetNumUninitialized(NumVertices);
				for (int32 I = 0; I < NumVertices; ++I)
				{
					const uint8* C = &Mesh->colors[4 * I];
					Colors[I] = FColor(C[0], C[1], C[2], C[3]);
				}
			}
			Triangles.Append(Mesh->triangles.data(), static_cast<int32>(Mesh->triangles.size()));
		}
		const bool bSucceeded = Mesh.has_value();
		const FString Message = bSucceeded ? FString() : ToFString(Error.message);

		AsyncTask(ENamedThreads::GameThread,
			[WeakThis, WeakTarget, SectionIndex, bCollision, bSucceeded, Message,
			 Vertices = MoveTemp(Vertices), Normals = MoveTemp(Normals), Colors = MoveTemp(Colors),
			 Triangles = MoveTemp(Triangles)]()
		{
			if (bSucceeded)
			{
				if (UProceduralMeshComponent* Component = WeakTarget.Get())
				{
					Component->CreateMeshSection(SectionIndex, Vertices, Triangles, Normals, TArray<FVector2D>(),
					                             Colors, TArray<FProcMeshTangent>(), bCollision);
				}
			}
			else
			{
				UE_LOG(LogRecon, Warning, TEXT("generation failed: %s"), *Message);
			}
			if (UReconModel* Self = WeakThis.Get())
			{
				Self->bRunning = false;
				Self->OnFinished.Broadcast(bSucceeded, Message);
			}
		});
	});
	return true;
}

void UReconModel::Cancel()
{
	// The flag stops a run that has not reached recon_run yet; recon_cancel one in progress.
	if (std::shared_ptr<std::atomic<bool>> Flag = CancelFlag)
	{
		Flag->store(true);
	}
	if (std::shared_ptr<recon_core::Session> Current = Session)
	{
		Current->Cancel();
	}
}

void UReconModel::BeginDestroy()
{
	Cancel();
	Super::BeginDestroy();
}
