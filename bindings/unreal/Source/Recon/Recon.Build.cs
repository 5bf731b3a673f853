// UnrealBuildTool rules for the Recon module: links librecon (the recon C ABI, include/recon.h),
// compiles the engine-independent core (Private/ReconCore.cpp, over bindings/cpp/recon.hpp) and
// stages the shared library (and the libtorch libraries next to it) beside the module binary.
//
// Where the files come from, first match wins:
//   headers:  <plugin>/ThirdParty/recon/include (recon.h, recon.hpp; `make -C bindings/unreal
//             stage` copies them), else the repository's include/ and bindings/cpp/ when the
//             plugin is used from inside the recon checkout.
//   library:  <plugin>/ThirdParty/recon/lib/<Platform>/ (librecon.so | librecon.dylib |
//             recon.dll + recon.dll.lib), plus every other shared library in that folder
//             (libtorch, c10, CUDA runtime) as a runtime dependency.
using System.IO;
using UnrealBuildTool;

public class Recon : ModuleRules
{
	public Recon(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;

		// recon.hpp reports failures with exceptions; ReconCore.cpp catches them all, so none
		// crosses into engine code.
		bEnableExceptions = true;

		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine", "ProceduralMeshComponent" });
		PrivateDependencyModuleNames.AddRange(new string[] { "Projects" });

		string ThirdParty = Path.Combine(PluginDirectory, "ThirdParty", "recon");
		string Staged = Path.Combine(ThirdParty, "include");
		if (File.Exists(Path.Combine(Staged, "recon.h")))
		{
			PrivateIncludePaths.Add(Staged);
		}
		else
		{
			// The plugin inside the recon repository: bindings/unreal -> ../../include, ../cpp.
			PrivateIncludePaths.Add(Path.GetFullPath(Path.Combine(PluginDirectory, "..", "..", "include")));
			PrivateIncludePaths.Add(Path.GetFullPath(Path.Combine(PluginDirectory, "..", "cpp")));
		}

		string LibDir = Path.Combine(ThirdParty, "lib", Target.Platform.ToString());
		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			// cargo writes recon.dll and its import library recon.dll.lib.
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "recon.dll.lib"));
			PublicDelayLoadDLLs.Add("recon.dll");
			AddRuntimeLibraries(LibDir, "*.dll");
		}
		else if (Target.Platform == UnrealTargetPlatform.Mac)
		{
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "librecon.dylib"));
			AddRuntimeLibraries(LibDir, "*.dylib");
		}
		else if (Target.Platform == UnrealTargetPlatform.Linux)
		{
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "librecon.so"));
			AddRuntimeLibraries(LibDir, "*.so*");
		}
	}

	// Copies every library of `Dir` matching `Pattern` next to the module binary when the
	// project is built or packaged; librecon finds its libtorch there ($ORIGIN / @loader_path /
	// the DLL search path set by FReconModule).
	private void AddRuntimeLibraries(string Dir, string Pattern)
	{
		if (!Directory.Exists(Dir))
		{
			return;
		}
		foreach (string Library in Directory.GetFiles(Dir, Pattern))
		{
			RuntimeDependencies.Add(Path.Combine("$(BinaryOutputDir)", Path.GetFileName(Library)), Library);
		}
	}
}
