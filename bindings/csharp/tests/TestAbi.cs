// TestAbi.cs — exercises the C# binding (and through it every function of include/recon.h) with
// the tiny model, under Mono or .NET:
//
//     mono TestAbi.exe MODEL_DIR IMAGE HEADER
//
// MODEL_DIR is tests/fixtures/model_tiny, IMAGE an RGBA cut-out PNG (tests/fixtures/images/
// example.png), HEADER include/recon.h (its function list is compared with the binding's
// DllImports). librecon must be loadable as "recon" (LD_LIBRARY_PATH on Linux).
// Generations run on the CPU with 2 + 2 sampler steps. The last line printed is
// "N passed, M failed"; the exit status is nonzero when M > 0.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;
using Recon;

internal static class TestAbi
{
    private const uint Steps = 2;

    private static int passed;
    private static int failed;
    private static string modelDir;
    private static string imagePath;
    private static string headerPath;
    private static string tmp;

    // The networks of the tiny model in recon_model_network's order (as bindings/c/test_abi.c).
    private static readonly string[][] TinyNetworks =
    {
        new[] { "slat_decoder_gs", "SLatGaussianDecoder", "ckpts/slat_dec_gs_swin8_tiny_fp16" },
        new[] { "slat_decoder_mesh", "SLatMeshDecoder", "ckpts/slat_dec_mesh_swin8_tiny_fp16" },
        new[] { "slat_decoder_rf", "SLatRadianceFieldDecoder", "ckpts/slat_dec_rf_swin8_tiny_fp16" },
        new[] { "slat_flow_model", "SLatFlowModel", "ckpts/slat_flow_img_dit_tiny_fp16" },
        new[] { "sparse_structure_decoder", "SparseStructureDecoder", "ckpts/ss_dec_conv3d_tiny_fp16" },
        new[] { "sparse_structure_flow_model", "SparseStructureFlowModel", "ckpts/ss_flow_img_dit_tiny_fp16" },
        new[] { "image_cond_model", "DinoVisionTransformer", "ckpts/dinov2_tiny" },
    };

    // A 4x4 opaque red PNG (the bytes of bindings/c/test_abi.c's k_png).
    private static readonly byte[] OpaquePng =
    {
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0x08, 0x06, 0x00, 0x00, 0x00, 0xa9,
        0xf1, 0x9e, 0x7e, 0x00, 0x00, 0x00, 0x12, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8,
        0xcf, 0xc0, 0xf0, 0x1f, 0x19, 0x33, 0x90, 0x2e, 0x00, 0x00, 0x3c, 0x40, 0x1f, 0xe1, 0x1a,
        0xf3, 0xa5, 0x48, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    };

    private static int Main(string[] args)
    {
        if (args.Length < 3)
        {
            Console.Error.WriteLine("usage: TestAbi.exe MODEL_DIR IMAGE HEADER");
            return 2;
        }
        modelDir = Path.GetFullPath(args[0]);
        imagePath = Path.GetFullPath(args[1]);
        headerPath = Path.GetFullPath(args[2]);
        tmp = Path.Combine(Path.GetTempPath(), "recon_csharp_" + Process.GetCurrentProcess().Id);
        Directory.CreateDirectory(tmp);
        var total = Stopwatch.StartNew();
        try
        {
            Run("bindings cover the header", TestBindingCoversHeader);
            Run("struct layout", TestStructLayout);
            Run("library", TestLibrary);
            Run("defaults", TestDefaults);
            Run("turntable and textured export params", TestTurntableAndTexturedParams);
            Run("load errors", TestLoadErrors);
            Run("offline hub", TestOfflineHub);
            Run("log callback", TestLogCallback);
            Run("unity frame", TestUnityFrame);
            TestWithModel();
        }
        catch (Exception e)
        {
            Fail("unexpected exception: " + e);
        }
        finally
        {
            try
            {
                Directory.Delete(tmp, true);
            }
            catch (Exception)
            {
            }
        }
        Console.WriteLine("total {0:F1} s", total.Elapsed.TotalSeconds);
        Console.WriteLine("{0} passed, {1} failed", passed, failed);
        return failed > 0 ? 1 : 0;
    }

    // ------------------------------------------------------------------ checks

    private static void Run(string name, Action test)
    {
        var sw = Stopwatch.StartNew();
        int before = failed;
        try
        {
            test();
        }
        catch (Exception e)
        {
            Fail(name + ": unexpected exception: " + e);
        }
        Console.WriteLine("{0} {1} ({2:F2} s)", failed == before ? "ok  " : "FAIL", name, sw.Elapsed.TotalSeconds);
    }

    private static void Fail(string message)
    {
        failed++;
        Console.Error.WriteLine("FAIL: " + message);
    }

    private static void Check(bool ok, string what)
    {
        if (ok)
        {
            passed++;
        }
        else
        {
            Fail(what);
        }
    }

    private static void CheckEqual<T>(T expected, T actual, string what)
    {
        Check(EqualityComparer<T>.Default.Equals(expected, actual),
              what + ": expected <" + expected + ">, got <" + actual + ">");
    }

    /// <summary>Expects a ReconException with <paramref name="status"/> whose message contains <paramref name="needle"/>.</summary>
    private static ReconException Throws(ReconStatus status, string needle, string what, Action action)
    {
        try
        {
            action();
        }
        catch (ReconException e)
        {
            Check(e.Status == status, what + ": status " + e.Status + " (" + e.Message + "), expected " + status);
            if (needle != null)
            {
                Check(e.Message.IndexOf(needle, StringComparison.OrdinalIgnoreCase) >= 0,
                      what + ": message '" + e.Message + "' lacks '" + needle + "'");
            }
            return e;
        }
        catch (Exception e)
        {
            Fail(what + ": threw " + e.GetType().Name + " instead of ReconException: " + e.Message);
            return null;
        }
        Fail(what + ": no exception, expected " + status);
        return null;
    }

    private static void Throws<TException>(string what, Action action) where TException : Exception
    {
        try
        {
            action();
        }
        catch (TException)
        {
            passed++;
            return;
        }
        catch (Exception e)
        {
            Fail(what + ": threw " + e.GetType().Name + " instead of " + typeof(TException).Name);
            return;
        }
        Fail(what + ": no exception, expected " + typeof(TException).Name);
    }

    private static bool AllFinite(float[] values)
    {
        return values.All(v => !float.IsNaN(v) && !float.IsInfinity(v));
    }

    // ------------------------------------------------------------------ without a model

    /// <summary>Every function of recon.h has a DllImport, and every DllImport is in recon.h.</summary>
    private static void TestBindingCoversHeader()
    {
        var declared = new SortedSet<string>();
        var declaration = new Regex(@"^(?:const\s+)?\w+\s*\*?\s*(recon_\w+)\(");
        foreach (string line in File.ReadAllLines(headerPath))
        {
            Match m = declaration.Match(line);
            if (m.Success)
            {
                declared.Add(m.Groups[1].Value);
            }
        }
        Type native = typeof(ReconModel).Assembly.GetType("Recon.NativeMethods", true);
        var imported = new SortedSet<string>(
            native.GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)
                  .Where(m => (m.Attributes & MethodAttributes.PinvokeImpl) != 0)
                  .Select(m => m.Name));
        Console.WriteLine("recon.h declares {0} functions; the binding imports {1}", declared.Count, imported.Count);
        Check(declared.Count >= 27, "recon.h parsed: " + declared.Count + " functions");
        foreach (string f in declared.Except(imported))
        {
            Fail("no DllImport for " + f);
        }
        foreach (string f in imported.Except(declared))
        {
            Fail("DllImport " + f + " is not in recon.h");
        }
        Check(declared.SetEquals(imported), "DllImports match recon.h");
    }

    /// <summary>The marshalled struct sizes match the C compiler's (LP64 table of bindings/c/test_abi.c).</summary>
    private static void TestStructLayout()
    {
        if (IntPtr.Size != 8)
        {
            Console.WriteLine("struct layout: not a 64-bit process, skipped");
            return;
        }
        var expected = new Dictionary<string, int>
        {
            { "LoadParams", 40 }, { "NetworkInfo", 40 }, { "Image", 40 }, { "RunParams", 56 },
            { "Progress", 16 }, { "Gaussians", 56 }, { "Mesh", 48 }, { "Camera", 96 },
            { "TurntableParams", 48 }, { "Frame", 32 }, { "TexturedExportParams", 72 },
        };
        Type native = typeof(ReconModel).Assembly.GetType("Recon.NativeMethods", true);
        foreach (KeyValuePair<string, int> kv in expected)
        {
            Type t = native.GetNestedType(kv.Key, BindingFlags.NonPublic | BindingFlags.Public);
            Check(t != null, "struct " + kv.Key + " exists");
            if (t != null)
            {
                CheckEqual(kv.Value, Marshal.SizeOf(t), "sizeof " + kv.Key);
            }
        }
        Type lp = native.GetNestedType("LoadParams", BindingFlags.NonPublic);
        CheckEqual(8, (int)Marshal.OffsetOf(lp, "model"), "offsetof(recon_load_params, model)");
        CheckEqual(24, (int)Marshal.OffsetOf(lp, "log_callback"), "offsetof(recon_load_params, log_callback)");
        Type rp = native.GetNestedType("RunParams", BindingFlags.NonPublic);
        CheckEqual(8, (int)Marshal.OffsetOf(rp, "seed"), "offsetof(recon_run_params, seed)");
        CheckEqual(40, (int)Marshal.OffsetOf(rp, "progress_callback"), "offsetof(recon_run_params, progress_callback)");
        Type im = native.GetNestedType("Image", BindingFlags.NonPublic);
        CheckEqual(8, (int)Marshal.OffsetOf(im, "data"), "offsetof(recon_image, data)");
        CheckEqual(32, (int)Marshal.OffsetOf(im, "stride"), "offsetof(recon_image, stride)");
        Type ni = native.GetNestedType("NetworkInfo", BindingFlags.NonPublic);
        CheckEqual(32, (int)Marshal.OffsetOf(ni, "stem"), "offsetof(recon_network_info, stem)");
        Type tp = native.GetNestedType("TurntableParams", BindingFlags.NonPublic);
        CheckEqual(24, (int)Marshal.OffsetOf(tp, "background"), "offsetof(recon_turntable_params, background)");
        CheckEqual(36, (int)Marshal.OffsetOf(tp, "device"), "offsetof(recon_turntable_params, device)");
        CheckEqual(44, (int)Marshal.OffsetOf(tp, "mesh_ssaa"), "offsetof(recon_turntable_params, mesh_ssaa)");
        Type fr = native.GetNestedType("Frame", BindingFlags.NonPublic);
        CheckEqual(24, (int)Marshal.OffsetOf(fr, "rgba"), "offsetof(recon_frame, rgba)");
        Type xp = native.GetNestedType("TexturedExportParams", BindingFlags.NonPublic);
        CheckEqual(52, (int)Marshal.OffsetOf(xp, "device"), "offsetof(recon_textured_export_params, device)");
        CheckEqual(64, (int)Marshal.OffsetOf(xp, "seed"), "offsetof(recon_textured_export_params, seed)");
    }

    private static void TestLibrary()
    {
        CheckEqual(ReconLibrary.ExpectedAbiVersion, ReconLibrary.AbiVersion, "ABI version");
        ReconLibrary.EnsureCompatible();
        string version = ReconLibrary.Version;
        Check(!string.IsNullOrEmpty(version), "version string");
        int gpus = ReconLibrary.CudaDeviceCount;
        Check(gpus >= 0, "CUDA device count");
        Console.WriteLine("recon {0}, ABI {1}, {2} CUDA device(s), {3}", version, ReconLibrary.AbiVersion, gpus,
                          Environment.Is64BitProcess ? "64-bit" : "32-bit");
        var texts = new Dictionary<ReconStatus, string>
        {
            { ReconStatus.Ok, "ok" },
            { ReconStatus.InvalidArgument, "invalid argument" },
            { ReconStatus.Io, "I/O error" },
            { ReconStatus.Network, "network error" },
            { ReconStatus.Format, "malformed file" },
            { ReconStatus.Checkpoint, "checkpoint does not match the network" },
            { ReconStatus.Unsupported, "not supported by this build" },
            { ReconStatus.Cancelled, "cancelled" },
            { ReconStatus.OutOfMemory, "out of memory" },
            { ReconStatus.Device, "device error" },
            { ReconStatus.Internal, "internal error" },
        };
        foreach (KeyValuePair<ReconStatus, string> kv in texts)
        {
            CheckEqual(kv.Value, ReconLibrary.StatusString(kv.Key), "status string " + kv.Key);
        }
        foreach (int unknown in new[] { -1, 11, 99, int.MinValue, int.MaxValue })
        {
            CheckEqual("unknown status", ReconLibrary.StatusString(unknown), "status string " + unknown);
        }
        var ex = new ReconException(ReconStatus.Io, "");
        CheckEqual("I/O error", ex.Message, "empty message falls back to the status text");
    }

    private static void TestDefaults()
    {
        var lp = new LoadParams();
        CheckEqual(ReconDevice.Auto, lp.Device, "LoadParams.Device");
        CheckEqual(OfflineMode.FromEnvironment, lp.Offline, "LoadParams.Offline");
        CheckEqual(ReconLogLevel.Info, lp.LogLevel, "LoadParams.LogLevel");
        Check(lp.Model == null && lp.Log == null, "LoadParams.Model/Log");
        var rp = new RunParams();
        CheckEqual(42UL, rp.Seed, "RunParams.Seed");
        CheckEqual(0U, rp.SparseStructureSteps, "RunParams.SparseStructureSteps");
        CheckEqual(0U, rp.SlatSteps, "RunParams.SlatSteps");
        CheckEqual(RunParams.DefaultCfgStrength, rp.SparseStructureCfgStrength, "RunParams.SparseStructureCfgStrength");
        CheckEqual(RunParams.DefaultCfgStrength, rp.SlatCfgStrength, "RunParams.SlatCfgStrength");
        CheckEqual(OutputFormats.Gaussians | OutputFormats.Mesh, rp.Formats, "RunParams.Formats");
        CheckEqual(MultiImageMode.Stochastic, rp.MultiImageMode, "RunParams.MultiImageMode");
        CheckEqual(true, rp.Preprocess, "RunParams.Preprocess");
        Check(rp.Progress == null, "RunParams.Progress");
    }

    /// <summary>
    /// recon_turntable_params_init_sized / recon_textured_export_params_init_sized through the
    /// binding's DllImports (internal, so called by reflection) with Marshal.SizeOf of its structs,
    /// and recon_mp4_supported.
    /// </summary>
    private static void TestTurntableAndTexturedParams()
    {
        Type native = typeof(ReconModel).Assembly.GetType("Recon.NativeMethods", true);
        const BindingFlags Flags = BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public;
        const int Ok = 0;
        const int InvalidArgument = (int)ReconStatus.InvalidArgument;

        // Turntable.
        Type tt = native.GetNestedType("TurntableParams", BindingFlags.NonPublic);
        MethodInfo ttInit = native.GetMethod("recon_turntable_params_init_sized", Flags);
        int ttSize = Marshal.SizeOf(tt);
        object[] args = { Activator.CreateInstance(tt), new UIntPtr((uint)ttSize) };
        CheckEqual(Ok, (int)ttInit.Invoke(null, args), "recon_turntable_params_init_sized status");
        object t = args[0];
        CheckEqual((uint)ttSize, (uint)tt.GetField("struct_size").GetValue(t), "turntable struct_size");
        CheckEqual(0, (int)tt.GetField("content").GetValue(t), "turntable content (RECON_TURNTABLE_GAUSSIANS)");
        CheckEqual(120U, (uint)tt.GetField("frames").GetValue(t), "turntable frames");
        CheckEqual(512U, (uint)tt.GetField("resolution").GetValue(t), "turntable resolution");
        CheckEqual(2.0f, (float)tt.GetField("radius").GetValue(t), "turntable radius");
        CheckEqual(40.0f, (float)tt.GetField("fov_degrees").GetValue(t), "turntable fov_degrees");
        var background = (float[])tt.GetField("background").GetValue(t);
        Check(background != null && background.SequenceEqual(new float[] { 0, 0, 0 }), "turntable background black");
        CheckEqual(ReconDevice.Auto, (int)tt.GetField("device").GetValue(t), "turntable device");
        CheckEqual(30U, (uint)tt.GetField("fps").GetValue(t), "turntable fps");
        CheckEqual(4U, (uint)tt.GetField("mesh_ssaa").GetValue(t), "turntable mesh_ssaa");
        object small = Activator.CreateInstance(tt);
        args = new object[] { small, new UIntPtr((uint)ttSize - 8) };
        CheckEqual(InvalidArgument, (int)ttInit.Invoke(null, args), "turntable init with a size below the struct");
        CheckEqual(0U, (uint)tt.GetField("struct_size").GetValue(args[0]), "turntable: nothing written for a small size");
        MethodInfo ttInitV1 = native.GetMethod("recon_turntable_params_init", Flags);
        args = new object[] { Activator.CreateInstance(tt) };
        ttInitV1.Invoke(null, args);
        CheckEqual((uint)ttSize, (uint)tt.GetField("struct_size").GetValue(args[0]), "recon_turntable_params_init struct_size");

        // Textured export.
        Type xt = native.GetNestedType("TexturedExportParams", BindingFlags.NonPublic);
        MethodInfo xtInit = native.GetMethod("recon_textured_export_params_init_sized", Flags);
        int xtSize = Marshal.SizeOf(xt);
        args = new object[] { Activator.CreateInstance(xt), new UIntPtr((uint)xtSize) };
        CheckEqual(Ok, (int)xtInit.Invoke(null, args), "recon_textured_export_params_init_sized status");
        object x = args[0];
        CheckEqual((uint)xtSize, (uint)xt.GetField("struct_size").GetValue(x), "textured struct_size");
        CheckEqual(0, (int)xt.GetField("image_format").GetValue(x), "textured image_format (RECON_TEXTURE_PNG)");
        CheckEqual(0.95f, (float)xt.GetField("simplify").GetValue(x), "textured simplify");
        Check((int)xt.GetField("fill_holes").GetValue(x) != 0, "textured fill_holes");
        CheckEqual(0.04f, (float)xt.GetField("fill_holes_max_size").GetValue(x), "textured fill_holes_max_size");
        CheckEqual(1024U, (uint)xt.GetField("texture_size").GetValue(x), "textured texture_size");
        CheckEqual(1, (int)xt.GetField("bake_mode").GetValue(x), "textured bake_mode (RECON_BAKE_OPTIMIZE)");
        CheckEqual(2500U, (uint)xt.GetField("bake_steps").GetValue(x), "textured bake_steps");
        CheckEqual(0.01f, (float)xt.GetField("bake_lambda_tv").GetValue(x), "textured bake_lambda_tv");
        CheckEqual(100U, (uint)xt.GetField("views").GetValue(x), "textured views");
        CheckEqual(1024U, (uint)xt.GetField("render_resolution").GetValue(x), "textured render_resolution");
        CheckEqual(0, (int)xt.GetField("vertex_colors_only").GetValue(x), "textured vertex_colors_only");
        CheckEqual(90U, (uint)xt.GetField("jpeg_quality").GetValue(x), "textured jpeg_quality");
        CheckEqual(ReconDevice.Auto, (int)xt.GetField("device").GetValue(x), "textured device");
        CheckEqual(1000U, (uint)xt.GetField("fill_holes_views").GetValue(x), "textured fill_holes_views");
        CheckEqual(1024U, (uint)xt.GetField("fill_holes_resolution").GetValue(x), "textured fill_holes_resolution");
        CheckEqual(0UL, (ulong)xt.GetField("seed").GetValue(x), "textured seed");
        args = new object[] { Activator.CreateInstance(xt), new UIntPtr((uint)xtSize - 8) };
        CheckEqual(InvalidArgument, (int)xtInit.Invoke(null, args), "textured init with a size below the struct");
        CheckEqual(0U, (uint)xt.GetField("struct_size").GetValue(args[0]), "textured: nothing written for a small size");
        MethodInfo xtInitV1 = native.GetMethod("recon_textured_export_params_init", Flags);
        args = new object[] { Activator.CreateInstance(xt) };
        xtInitV1.Invoke(null, args);
        CheckEqual((uint)xtSize, (uint)xt.GetField("struct_size").GetValue(args[0]), "recon_textured_export_params_init struct_size");

        int mp4 = (int)native.GetMethod("recon_mp4_supported", Flags).Invoke(null, null);
        Check(mp4 == 0 || mp4 == 1, "recon_mp4_supported is 0 or 1: " + mp4);
        Console.WriteLine("MP4 turntables {0}", mp4 == 1 ? "supported" : "not supported (PNG frames only)");
    }

    private static LoadParams CpuParams(string model)
    {
        return new LoadParams { Model = model, Device = ReconDevice.Cpu, Offline = OfflineMode.Offline };
    }

    private static void TestLoadErrors()
    {
        Throws(ReconStatus.InvalidArgument, "model", "null model", () => ReconModel.Load(CpuParams(null)).Dispose());
        Throws(ReconStatus.InvalidArgument, null, "empty model", () => ReconModel.Load(CpuParams("")).Dispose());
        Throws<ArgumentNullException>("null LoadParams", () => ReconModel.Load((LoadParams)null));

        string missing = Path.Combine(tmp, "no_such_model_dir");
        ReconException e = Throws(ReconStatus.Io, "no_such_model_dir", "missing directory",
                                  () => ReconModel.Load(CpuParams(missing)).Dispose());
        if (e != null)
        {
            Console.WriteLine("missing directory -> {0}: {1}", ReconLibrary.StatusString(e.Status), e.Message);
        }

        string empty = Path.Combine(tmp, "empty_dir");
        Directory.CreateDirectory(empty);
        Throws(ReconStatus.Io, "pipeline.json", "directory without pipeline.json",
               () => ReconModel.Load(CpuParams(empty)).Dispose());

        string broken = Path.Combine(tmp, "bad_pipeline_json");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "pipeline.json"), "{ \"name\": \"TrellisImageTo3DPipeline\", \"args\": ");
        Throws(ReconStatus.Format, "pipeline.json", "malformed pipeline.json",
               () => ReconModel.Load(CpuParams(broken)).Dispose());

        var lp = CpuParams(modelDir);
        lp.Device = 99;
        Throws(ReconStatus.Device, "99", "device 99", () => ReconModel.Load(lp).Dispose());

        lp = CpuParams(modelDir);
        lp.LogLevel = (ReconLogLevel)5;
        Throws(ReconStatus.InvalidArgument, null, "log level 5", () => ReconModel.Load(lp).Dispose());

        lp = CpuParams(modelDir);
        lp.Offline = (OfflineMode)2;
        Throws(ReconStatus.InvalidArgument, null, "offline 2", () => ReconModel.Load(lp).Dispose());

        // A non-ASCII path reaches the library as UTF-8 (it names it in the message).
        string unicode = Path.Combine(tmp, "modèle_ü_日本");
        Throws(ReconStatus.Io, "modèle_ü_日本", "UTF-8 path", () => ReconModel.Load(CpuParams(unicode)).Dispose());
    }

    /// <summary>Offline with an empty Hub cache: Network error naming the repo.</summary>
    private static void TestOfflineHub()
    {
        string home = Path.Combine(tmp, "hf_home");
        Directory.CreateDirectory(home);
        string oldHome = Environment.GetEnvironmentVariable("HF_HOME");
        string oldCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        Environment.SetEnvironmentVariable("HF_HOME", home);
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", null);
        try
        {
            Throws(ReconStatus.Network, "someone/missing-repo", "offline Hub, not cached",
                   () => ReconModel.Load(CpuParams("someone/missing-repo")).Dispose());
        }
        finally
        {
            Environment.SetEnvironmentVariable("HF_HOME", oldHome);
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", oldCache);
        }
    }

    private static void TestLogCallback()
    {
        var messages = new List<KeyValuePair<ReconLogLevel, string>>();
        int threadId = Thread.CurrentThread.ManagedThreadId;
        bool sameThread = true;
        var lp = CpuParams(modelDir);
        lp.LogLevel = ReconLogLevel.Debug;
        lp.Log = (level, message) =>
        {
            messages.Add(new KeyValuePair<ReconLogLevel, string>(level, message));
            sameThread &= Thread.CurrentThread.ManagedThreadId == threadId;
        };
        using (ReconModel model = ReconModel.Load(lp))
        {
            Check(messages.Count > 0, "log messages during load");
            Check(messages.All(m => m.Key >= ReconLogLevel.Error && m.Key <= ReconLogLevel.Debug && m.Value != null),
                  "log levels and messages valid");
            Check(sameThread, "log callback on the loading thread");
            if (messages.Count > 0)
            {
                Console.WriteLine("{0} log messages; first: [{1}] {2}", messages.Count, messages[0].Key, messages[0].Value);
            }
        }

        // Errors only: a successful load logs nothing. A throwing sink does not break the load.
        int count = 0;
        lp.LogLevel = ReconLogLevel.Error;
        lp.Log = (level, message) => count++;
        using (ReconModel.Load(lp))
        {
        }
        CheckEqual(0, count, "no messages at level Error");
        lp.LogLevel = ReconLogLevel.Debug;
        lp.Log = (level, message) => { throw new InvalidOperationException("sink failure"); };
        using (ReconModel model = ReconModel.Load(lp))
        {
            CheckEqual("TrellisImageTo3DPipeline", model.PipelineName, "load with a throwing log sink");
        }
    }

    /// <summary>The Unity package's frame conversion (bindings/unity/Runtime/ReconUnityFrame.cs).</summary>
    private static void TestUnityFrame()
    {
        // A triangle facing up (+Z) in TRELLIS's right-handed Z-up frame: (b-a)x(c-a) = +Z.
        float[] positions = { 0, 0, 0, 1, 0, 0, 0, 1, 0 };
        uint[] indices = { 0, 1, 2 };
        float[] unity = ReconUnityFrame.Positions(positions);
        CheckEqual(9, unity.Length, "unity positions length");
        Check(unity.SequenceEqual(new float[] { 0, 0, 0, 1, 0, 0, 0, 0, 1 }), "unity positions (x, z, y)");
        int[] tris = ReconUnityFrame.Triangles(indices);
        Check(tris.SequenceEqual(new[] { 0, 2, 1 }), "unity triangles reversed");
        // Unity's front face: Vector3.Cross(v1 - v0, v2 - v0) points out of it (what
        // Mesh.RecalculateNormals computes). It must be +Y (up) in Unity.
        float[] n = Cross(Sub(unity, tris[1], tris[0]), Sub(unity, tris[2], tris[0]));
        Check(n[0] == 0 && n[1] > 0 && n[2] == 0, "unity front face points up: " + string.Join(",", n));

        byte[] rgba = ReconUnityFrame.Colors32(new[] { 0f, 0.5f, 1f, 2f, -1f, 0.25f });
        Check(rgba.SequenceEqual(new byte[] { 0, 128, 255, 255, 255, 0, 64, 255 }), "unity colours RGBA32: " + string.Join(",", rgba));
        Check(ReconUnityFrame.Colors32(null) == null, "no colours -> null");

        // Texture rows: GetPixels32 is bottom-up, recon_image top-down.
        var pixels = new byte[] { 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6 };
        byte[] flipped = ReconUnityFrame.FlipRows(pixels, 2, 3);
        Check(flipped.SequenceEqual(new byte[] { 5, 5, 5, 5, 6, 6, 6, 6, 3, 3, 3, 3, 4, 4, 4, 4, 1, 1, 1, 1, 2, 2, 2, 2 }),
              "rows flipped");
    }

    /// <summary>Sum over faces of v0 · (v1 × v2) / 6: positive when Cross(v1 - v0, v2 - v0) points outward.</summary>
    private static double SignedVolume(float[] p, int[] tris)
    {
        double volume = 0;
        for (int f = 0; f + 2 < tris.Length; f += 3)
        {
            int a = 3 * tris[f], b = 3 * tris[f + 1], c = 3 * tris[f + 2];
            double cx = (double)p[b + 1] * p[c + 2] - (double)p[b + 2] * p[c + 1];
            double cy = (double)p[b + 2] * p[c] - (double)p[b] * p[c + 2];
            double cz = (double)p[b] * p[c + 1] - (double)p[b + 1] * p[c];
            volume += p[a] * cx + p[a + 1] * cy + p[a + 2] * cz;
        }
        return volume / 6.0;
    }

    private static float[] Sub(float[] p, int i, int j)
    {
        return new[] { p[3 * i] - p[3 * j], p[3 * i + 1] - p[3 * j + 1], p[3 * i + 2] - p[3 * j + 2] };
    }

    private static float[] Cross(float[] a, float[] b)
    {
        return new[] { a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0] };
    }

    // ------------------------------------------------------------------ with the tiny model

    private static void TestWithModel()
    {
        ReconModel model = null;
        Run("load", () => model = ReconModel.Load(CpuParams(modelDir)));
        if (model == null)
        {
            return;
        }
        ReconGaussians first = null;
        ReconResult kept = null;
        try
        {
            Run("introspection", () => TestIntrospection(model));
            Run("run validation", () => TestRunValidation(model));
            Run("generate Gaussians", () => first = TestGenerateGaussians(model));
            Run("generate mesh", () => TestGenerateMesh(model));
            Run("cancel from another thread", () => TestCancelFromThread(model));
            Run("cancel before the run", () => TestCancelBeforeRun(model));
            Run("progress callback stops the run", () => TestProgressStops(model));
            Run("usable after cancel", () => kept = TestRunAfterCancel(model, first));
            Run("concurrent runs", () => TestConcurrentRuns(model));
        }
        finally
        {
            model.Dispose();
        }
        Run("disposed model", () =>
        {
            model.Dispose(); // twice is fine
            Throws<ObjectDisposedException>("PipelineName after Dispose", () => { string s = model.PipelineName; });
            Throws<ObjectDisposedException>("Run after Dispose", () => model.Run(ReconImage.Encoded(OpaquePng)));
        });
        if (kept != null)
        {
            Run("result outlives its model", () =>
            {
                using (kept)
                {
                    ReconGaussians g = kept.GetGaussians();
                    CheckEqual(first != null ? first.Count : g.Count, g.Count, "Gaussians after the model is freed");
                    byte[] ply = kept.ExportToBytes(ExportFormat.PlyGaussians);
                    Check(ply.Length > 0 && Encoding.ASCII.GetString(ply, 0, 4) == "ply\n", "PLY after the model is freed");
                }
                Throws<ObjectDisposedException>("result after Dispose", () => kept.GetGaussians());
            });
        }
    }

    private static void TestIntrospection(ReconModel model)
    {
        CheckEqual("", model.LastError, "no error yet");
        CheckEqual("TrellisImageTo3DPipeline", model.PipelineName, "pipeline name");
        CheckEqual(ReconDevice.Cpu, model.Device, "device");
        CheckEqual(TinyNetworks.Length, model.NetworkCount, "network count");
        IReadOnlyList<NetworkInfo> networks = model.Networks;
        for (int i = 0; i < networks.Count && i < TinyNetworks.Length; i++)
        {
            NetworkInfo n = networks[i];
            CheckEqual(TinyNetworks[i][0], n.Key, "network " + i + " key");
            CheckEqual(TinyNetworks[i][1], n.ClassName, "network " + i + " class");
            CheckEqual(TinyNetworks[i][2], n.Stem, "network " + i + " stem");
            Check(n.Implemented && n.NumElements > 0, "network " + i + " implemented with elements");
            Console.WriteLine("network {0}: {1}, {2} elements", i, n, n.NumElements);
        }
        Throws(ReconStatus.InvalidArgument, "out of range", "network out of range", () => model.GetNetwork(TinyNetworks.Length));
        Check(model.LastError.Contains("out of range"), "LastError after a failure");
        Throws<ArgumentOutOfRangeException>("negative network index", () => model.GetNetwork(-1));
    }

    private static RunParams Quick(OutputFormats formats)
    {
        return new RunParams
        {
            Seed = 1,
            SparseStructureSteps = Steps,
            SlatSteps = Steps,
            Formats = formats,
        };
    }

    /// <summary>A 64x64 RGBA cut-out: a shaded disc on a transparent background (as test_abi.c).</summary>
    private static ReconImage Cutout()
    {
        const int side = 64;
        var pixels = new byte[side * side * 4];
        for (int y = 0; y < side; y++)
        {
            for (int x = 0; x < side; x++)
            {
                int o = 4 * (y * side + x);
                double dx = x - 31.5, dy = y - 31.5;
                pixels[o] = (byte)(40 + 3 * x);
                pixels[o + 1] = (byte)(200 - 2 * y);
                pixels[o + 2] = 120;
                pixels[o + 3] = dx * dx + dy * dy < 24.0 * 24.0 ? (byte)255 : (byte)0;
            }
        }
        return ReconImage.Rgba8(pixels, side, side);
    }

    private static void TestRunValidation(ReconModel model)
    {
        Throws(ReconStatus.InvalidArgument, "num_images", "no images", () => model.Run(new ReconImage[0]));
        Throws<ArgumentNullException>("null image list", () => model.Run((IList<ReconImage>)null));
        Throws(ReconStatus.Format, null, "garbage bytes",
               () => model.Run(ReconImage.Encoded(Encoding.ASCII.GetBytes("this is not an image at all"))));
        Throws(ReconStatus.Unsupported, "background", "opaque image with preprocessing",
               () => model.Run(ReconImage.Encoded(OpaquePng)));
        Throws(ReconStatus.InvalidArgument, "48", "raw RGB too short",
               () => model.Run(ReconImage.Rgb8(new byte[47], 4, 4)));
        Throws(ReconStatus.InvalidArgument, "stride", "stride below a row",
               () => model.Run(ReconImage.Rgb8(new byte[48], 4, 4, 11)));
        var bad = new RunParams { SlatCfgStrength = float.NaN };
        Throws(ReconStatus.InvalidArgument, "cfg_strength", "NaN cfg", () => model.Run(Cutout(), bad));
        bad = new RunParams { Formats = OutputFormats.None };
        Throws(ReconStatus.InvalidArgument, "format", "no formats", () => model.Run(Cutout(), bad));
        bad = new RunParams { MultiImageMode = (MultiImageMode)2 };
        Throws(ReconStatus.InvalidArgument, "multi_image_mode", "bad multi-image mode", () => model.Run(Cutout(), bad));
    }

    private static ReconGaussians TestGenerateGaussians(ReconModel model)
    {
        var reports = new List<ReconProgress>();
        int threadId = Thread.CurrentThread.ManagedThreadId;
        bool sameThread = true;
        RunParams rp = Quick(OutputFormats.Gaussians);
        rp.Progress = p =>
        {
            reports.Add(p);
            sameThread &= Thread.CurrentThread.ManagedThreadId == threadId;
            return true;
        };
        var sw = Stopwatch.StartNew();
        using (ReconResult result = model.Run(ReconImage.FromFile(imagePath), rp))
        {
            Console.WriteLine("generation (Gaussians only, {0} + {0} steps, {1}): {2:F2} s", Steps,
                              Path.GetFileName(imagePath), sw.Elapsed.TotalSeconds);
            CheckProgress(reports);
            Check(sameThread, "progress on the calling thread");

            ReconGaussians g = result.GetGaussians();
            int n = g.Count;
            Check(n > 0, "Gaussian count > 0");
            CheckEqual(3 * n, g.Positions.Length, "positions length");
            CheckEqual(3 * n, g.FeaturesDc.Length, "features_dc length");
            CheckEqual(3 * n, g.Scales.Length, "scales length");
            CheckEqual(4 * n, g.Rotations.Length, "rotations length");
            CheckEqual(n, g.Opacities.Length, "opacities length");
            Check(AllFinite(g.Positions) && AllFinite(g.FeaturesDc) && AllFinite(g.Scales) &&
                  AllFinite(g.Rotations) && AllFinite(g.Opacities), "finite Gaussians");
            Check(g.Opacities.All(o => o >= 0 && o <= 1), "opacities in 0..1");
            Check(g.Scales.All(s => s > 0), "positive scales");
            bool unit = true;
            for (int i = 0; i < n; i++)
            {
                double norm = 0;
                for (int k = 0; k < 4; k++)
                {
                    norm += (double)g.Rotations[4 * i + k] * g.Rotations[4 * i + k];
                }
                unit &= Math.Abs(Math.Sqrt(norm) - 1.0) < 1e-3;
            }
            Check(unit, "unit quaternions");
            Check(g.Positions.All(v => v >= -0.6f && v <= 0.6f), "centres near the unit cube");
            Console.WriteLine("{0} Gaussians", n);

            // No mesh, no cameras.
            Throws(ReconStatus.InvalidArgument, "mesh", "mesh of a Gaussians-only run", () => result.GetMesh());
            CheckEqual(0, result.CameraCount, "camera count");
            Throws(ReconStatus.InvalidArgument, "out of range", "camera 0", () => result.GetCamera(0));
            Check(result.LastError.Contains("out of range"), "result LastError");
            float[] extrinsic4x4 = null, intrinsic3x3 = null;
            Throws(ReconStatus.InvalidArgument, "out of range", "camera 0 matrices",
                   () => result.GetCameraMatrices(0, out extrinsic4x4, out intrinsic3x3));
            Check(extrinsic4x4 == null && intrinsic3x3 == null, "no matrices");

            // Gaussian PLY to a file and to bytes: the same bytes.
            string path = Path.Combine(tmp, "gaussians.ply");
            result.Export(ExportFormat.PlyGaussians, path);
            byte[] file = File.ReadAllBytes(path);
            byte[] bytes = result.ExportToBytes(ExportFormat.PlyGaussians);
            Check(file.Length > 0 && file.SequenceEqual(bytes), "PLY file == PLY bytes");
            string header = Encoding.ASCII.GetString(bytes, 0, Math.Min(bytes.Length, 2048));
            Check(header.StartsWith("ply\n") && header.Contains("element vertex " + n + "\n"), "PLY header names " + n + " vertices");
            Console.WriteLine("Gaussian PLY: {0} bytes", bytes.Length);

            // Refusals.
            Throws(ReconStatus.InvalidArgument, "RECON_FORMAT_MESH", "GLB without a mesh",
                   () => result.ExportToBytes(ExportFormat.Glb));
            Throws(ReconStatus.InvalidArgument, "format", "export format 0", () => result.Export((ExportFormat)0, path));
            Throws(ReconStatus.InvalidArgument, "RECON_FORMAT_MESH", "GLB with cameras without a mesh",
                   () => result.ExportToBytes(ExportFormat.GlbWithCameras));
            Throws(ReconStatus.InvalidArgument, "format", "export format 6 to bytes", () => result.ExportToBytes((ExportFormat)6));
            string missing = Path.Combine(tmp, "no_such_dir", "g.ply");
            Throws(ReconStatus.Io, null, "export into a missing directory", () => result.Export(ExportFormat.PlyGaussians, missing));
            Check(!File.Exists(missing), "nothing written");
            return g;
        }
    }

    private static void CheckProgress(List<ReconProgress> reports)
    {
        Check(reports.Count > 0 && reports[0].Stage == ReconStage.Preprocess && reports[0].Step == 0, "first report PREPROCESS 0");
        bool ordered = true;
        for (int i = 1; i < reports.Count; i++)
        {
            ordered &= reports[i].Stage >= reports[i - 1].Stage && reports[i].Step <= reports[i].Total;
        }
        Check(ordered, "reports in stage order");
        foreach (ReconStage s in new[] { ReconStage.Preprocess, ReconStage.Condition, ReconStage.SparseStructure,
                                         ReconStage.StructuredLatent, ReconStage.Decode })
        {
            Check(reports.Any(r => r.Stage == s), "stage " + s + " reported");
        }
        Check(reports.Where(r => r.Stage == ReconStage.SparseStructure).All(r => r.Total == Steps), "sparse-structure total = steps");
        Check(reports.Where(r => r.Stage == ReconStage.StructuredLatent).All(r => r.Total == Steps), "slat total = steps");
        Console.WriteLine("progress: " + string.Join(" ", reports.Select(r => (int)r.Stage + ":" + r.Step + "/" + r.Total)));
    }

    private static void TestGenerateMesh(ReconModel model)
    {
        var sw = Stopwatch.StartNew();
        using (ReconResult result = model.Run(ReconImage.FromFile(imagePath), Quick(OutputFormats.Mesh)))
        {
            Console.WriteLine("generation (mesh only, {0} + {0} steps, {1}): {2:F2} s", Steps,
                              Path.GetFileName(imagePath), sw.Elapsed.TotalSeconds);
            ReconMesh m = result.GetMesh();
            Check(m.VertexCount > 0 && m.FaceCount > 0, "mesh not empty");
            CheckEqual(3 * m.VertexCount, m.Positions.Length, "positions length");
            CheckEqual(3 * m.FaceCount, m.Indices.Length, "indices length");
            Check(AllFinite(m.Positions), "finite positions");
            Check(m.Indices.All(i => i < m.VertexCount), "indices name vertices");
            if (m.Colors != null)
            {
                CheckEqual(3 * m.VertexCount, m.Colors.Length, "colours length");
                Check(m.Colors.All(c => c >= 0 && c <= 1), "colours in 0..1");
            }
            Console.WriteLine("mesh: {0} vertices, {1} triangles, colours {2}", m.VertexCount, m.FaceCount, m.Colors != null);

            // Faces point outward: positive signed volume under the right-handed rule in
            // TRELLIS's frame, and under Unity's rule (front = Cross(v1 - v0, v2 - v0)) after
            // ReconUnityFrame's conversion (mirrored axes, reversed winding).
            var trellisTris = new int[m.Indices.Length];
            for (int i = 0; i < trellisTris.Length; i++)
            {
                trellisTris[i] = (int)m.Indices[i];
            }
            double trellisVolume = SignedVolume(m.Positions, trellisTris);
            double unityVolume = SignedVolume(ReconUnityFrame.Positions(m.Positions), ReconUnityFrame.Triangles(m.Indices));
            Console.WriteLine("signed volume: {0:G4} (TRELLIS frame), {1:G4} (Unity frame)", trellisVolume, unityVolume);
            Check(trellisVolume > 0, "mesh faces outward in TRELLIS's frame");
            Check(Math.Abs(unityVolume - trellisVolume) <= 1e-6 * Math.Abs(trellisVolume) + 1e-9, "same volume in Unity's frame");
            Throws(ReconStatus.InvalidArgument, "Gaussian", "Gaussians of a mesh-only run", () => result.GetGaussians());

            // GLB to a file and to bytes.
            string glbPath = Path.Combine(tmp, "asset.glb");
            result.Export(ExportFormat.Glb, glbPath);
            byte[] glb = File.ReadAllBytes(glbPath);
            Check(glb.SequenceEqual(result.ExportToBytes(ExportFormat.Glb)), "GLB file == GLB bytes");
            Check(glb.SequenceEqual(result.ExportToBytes(ExportFormat.GlbWithCameras)), "no cameras: GLB with cameras == GLB");
            Check(glb.Length > 20 && Encoding.ASCII.GetString(glb, 0, 4) == "glTF" && BitConverter.ToUInt32(glb, 8) == glb.Length,
                  "GLB header and length");
            Console.WriteLine("GLB: {0} bytes", glb.Length);

            // OBJ: a "v" line per vertex, an "f" line per triangle; mesh PLY counts.
            string objPath = Path.Combine(tmp, "asset.obj");
            result.Export(ExportFormat.Obj, objPath);
            string[] lines = File.ReadAllLines(objPath);
            CheckEqual(m.VertexCount, lines.Count(l => l.StartsWith("v ")), "OBJ vertices");
            CheckEqual(m.FaceCount, lines.Count(l => l.StartsWith("f ")), "OBJ faces");
            byte[] ply = result.ExportToBytes(ExportFormat.PlyMesh);
            string header = Encoding.ASCII.GetString(ply, 0, Math.Min(ply.Length, 2048));
            Check(header.Contains("element vertex " + m.VertexCount + "\n") && header.Contains("element face " + m.FaceCount + "\n"),
                  "mesh PLY counts");
        }
    }

    /// <summary>
    /// The run (this thread) is held in its progress callback once the sparse-structure sampler
    /// starts, until another thread has cancelled the token; the token's registration calls
    /// recon_cancel there, so the run stops with the library's "recon_cancel" message.
    /// </summary>
    private static void TestCancelFromThread(ReconModel model)
    {
        using (var cts = new CancellationTokenSource())
        using (var started = new ManualResetEventSlim(false))
        using (var cancelled = new ManualResetEventSlim(false))
        {
            int cancellerThread = -1;
            var canceller = new Thread(() =>
            {
                if (started.Wait(TimeSpan.FromSeconds(120)))
                {
                    cancellerThread = Thread.CurrentThread.ManagedThreadId;
                    cts.Cancel();
                }
                cancelled.Set();
            });
            canceller.Start();
            var maxStage = ReconStage.Preprocess;
            uint maxSamplerStep = 0;
            bool heldTooLong = false;
            RunParams rp = Quick(OutputFormats.Gaussians);
            rp.Progress = p =>
            {
                if (p.Stage > maxStage)
                {
                    maxStage = p.Stage;
                }
                if (p.Stage == ReconStage.SparseStructure)
                {
                    maxSamplerStep = Math.Max(maxSamplerStep, p.Step);
                    if (!started.IsSet)
                    {
                        started.Set();
                        heldTooLong = !cancelled.Wait(TimeSpan.FromSeconds(60));
                    }
                }
                return true;
            };
            var sw = Stopwatch.StartNew();
            ReconException e = Throws(ReconStatus.Cancelled, "recon_cancel", "run cancelled through the token",
                                      () => model.Run(Cutout(), rp, cts.Token).Dispose());
            canceller.Join();
            Check(cancellerThread != -1 && cancellerThread != Thread.CurrentThread.ManagedThreadId, "cancelled from another thread");
            Check(!heldTooLong, "cancel arrived while the run was held");
            Check(maxStage == ReconStage.SparseStructure && maxSamplerStep == 0, "stopped before the sampler's first step");
            if (e != null)
            {
                Console.WriteLine("cancelled from thread {0} after {1:F2} s: {2}", cancellerThread, sw.Elapsed.TotalSeconds, e.Message);
            }
        }
    }

    private static void TestCancelBeforeRun(ReconModel model)
    {
        using (var cts = new CancellationTokenSource())
        {
            cts.Cancel();
            int reports = 0;
            RunParams rp = Quick(OutputFormats.Gaussians);
            rp.Progress = p => { reports++; return true; };
            Throws(ReconStatus.Cancelled, "cancel", "already-cancelled token", () => model.Run(Cutout(), rp, cts.Token).Dispose());
            CheckEqual(0, reports, "no progress delivered after the cancel");
        }
        // A Cancel while no run is active has no effect on the next run.
        model.Cancel();
        var thread = new Thread(() => model.Cancel());
        thread.Start();
        thread.Join();
        RunParams stopAtCondition = Quick(OutputFormats.Gaussians);
        stopAtCondition.Progress = p => p.Stage < ReconStage.Condition;
        Throws(ReconStatus.Cancelled, "progress callback", "idle Cancel is cleared by the next run",
               () => model.Run(Cutout(), stopAtCondition).Dispose());
    }

    private static void TestProgressStops(ReconModel model)
    {
        int calls = 0;
        RunParams rp = Quick(OutputFormats.Gaussians);
        rp.Progress = p => { calls++; return false; };
        Throws(ReconStatus.Cancelled, "cancel", "progress returns false", () => model.Run(Cutout(), rp).Dispose());
        CheckEqual(1, calls, "one report before the stop");

        rp.Progress = p => { throw new InvalidOperationException("from the progress callback"); };
        try
        {
            model.Run(Cutout(), rp).Dispose();
            Fail("a throwing progress callback: no exception");
        }
        catch (InvalidOperationException e)
        {
            CheckEqual("from the progress callback", e.Message, "progress exception rethrown by Run");
        }
    }

    private static ReconResult TestRunAfterCancel(ReconModel model, ReconGaussians first)
    {
        var sw = Stopwatch.StartNew();
        ReconResult result = model.Run(ReconImage.FromFile(imagePath), Quick(OutputFormats.Gaussians));
        Console.WriteLine("generation after the cancels: {0:F2} s", sw.Elapsed.TotalSeconds);
        ReconGaussians g = result.GetGaussians();
        if (first != null)
        {
            CheckEqual(first.Count, g.Count, "same seed, same count");
            double maxDiff = 0;
            for (int i = 0; i < Math.Min(first.Positions.Length, g.Positions.Length); i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(first.Positions[i] - g.Positions[i]));
            }
            Check(maxDiff <= 1e-4, "same seed, same centres (max diff " + maxDiff + ")");
        }
        return result;
    }

    /// <summary>Runs from several threads on one model are serialised; each gets its own answer.</summary>
    private static void TestConcurrentRuns(ReconModel model)
    {
        const int n = 3;
        var statuses = new ReconStatus[n];
        int inFlight = 0, overlaps = 0;
        var threads = new Thread[n];
        for (int t = 0; t < n; t++)
        {
            int index = t;
            threads[t] = new Thread(() =>
            {
                RunParams rp = Quick(OutputFormats.Gaussians);
                rp.Seed = (ulong)index;
                rp.Progress = p =>
                {
                    if (p.Stage == ReconStage.Preprocess && p.Step == 0 && Interlocked.Increment(ref inFlight) > 1)
                    {
                        Interlocked.Increment(ref overlaps);
                    }
                    if (p.Stage >= ReconStage.Condition)
                    {
                        Interlocked.Decrement(ref inFlight);
                        return false;
                    }
                    return true;
                };
                try
                {
                    model.Run(Cutout(), rp).Dispose();
                    statuses[index] = ReconStatus.Ok;
                }
                catch (ReconException e)
                {
                    statuses[index] = e.Status;
                }
            });
            threads[t].Start();
        }
        foreach (Thread t in threads)
        {
            t.Join();
        }
        Check(statuses.All(s => s == ReconStatus.Cancelled), "each run stopped by its own callback");
        CheckEqual(0, overlaps, "runs on one model never overlap");
    }
}
