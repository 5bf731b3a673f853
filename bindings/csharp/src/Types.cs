// The value types of the public API: parameters, inputs, progress reports and result copies.
// Defaults are never restated here: LoadParams and RunParams start from the library's
// recon_load_params_init / recon_run_params_init, so there is one source of truth (Rust).

using System;
using System.Threading;

namespace Recon
{
    /// <summary>Device values for <see cref="LoadParams.Device"/> (or a CUDA index >= 0).</summary>
    public static class ReconDevice
    {
        /// <summary>The first CUDA device if usable, else the CPU (RECON_DEVICE_AUTO).</summary>
        public const int Auto = -2;

        /// <summary>The CPU (RECON_DEVICE_CPU).</summary>
        public const int Cpu = -1;
    }

    /// <summary>Log levels (RECON_LOG_*).</summary>
    public enum ReconLogLevel
    {
        Error = 1,
        Warn = 2,
        Info = 3,
        Debug = 4,
    }

    /// <summary>Whether <see cref="ReconModel.Load(LoadParams)"/> may download from the Hub.</summary>
    public enum OfflineMode
    {
        /// <summary>The HF_HUB_OFFLINE environment variable decides (RECON_OFFLINE_FROM_ENV).</summary>
        FromEnvironment = -1,

        /// <summary>Download what is missing from the local Hub cache.</summary>
        Online = 0,

        /// <summary>Use only the local Hub cache.</summary>
        Offline = 1,
    }

    /// <summary>Outputs a run produces (RECON_FORMAT_* bits).</summary>
    [Flags]
    public enum OutputFormats : uint
    {
        None = 0,
        Gaussians = 1,
        Mesh = 2,
        RadianceField = 4,
    }

    /// <summary>How two or more views are combined (RECON_MULTI_IMAGE_*).</summary>
    public enum MultiImageMode
    {
        Stochastic = 0,
        MultiDiffusion = 1,
    }

    /// <summary>Export file formats (RECON_EXPORT_*).</summary>
    public enum ExportFormat
    {
        Glb = 1,
        PlyGaussians = 2,
        PlyMesh = 3,
        Obj = 4,
        /// <summary>GLB plus one glTF camera node per camera of the result (the plain GLB when it has none).</summary>
        GlbWithCameras = 5,
    }

    /// <summary>Input pixel formats (RECON_IMAGE_*).</summary>
    public enum ImageFormat
    {
        /// <summary>PNG, JPEG or WebP file bytes.</summary>
        Encoded = 0,

        /// <summary>Raw 8-bit RGB, rows top to bottom.</summary>
        Rgb8 = 1,

        /// <summary>Raw 8-bit RGBA (straight alpha), rows top to bottom.</summary>
        Rgba8 = 2,
    }

    /// <summary>Pipeline stages reported to the progress callback (RECON_STAGE_*).</summary>
    public enum ReconStage
    {
        Preprocess = 1,
        Condition = 2,
        SparseStructure = 3,
        StructuredLatent = 4,
        Decode = 5,
        Export = 6,
    }

    /// <summary>How to load a model. Starts with the library's defaults.</summary>
    public sealed class LoadParams
    {
        public LoadParams()
        {
            var native = new NativeMethods.LoadParams();
            NativeMethods.recon_load_params_init(ref native);
            Device = native.device;
            Offline = (OfflineMode)native.offline;
            LogLevel = (ReconLogLevel)native.log_level;
        }

        /// <summary>A local model directory or a Hugging Face repo id ("owner/name[@rev]").</summary>
        public string Model { get; set; }

        /// <summary><see cref="ReconDevice.Auto"/> (default), <see cref="ReconDevice.Cpu"/> or a CUDA index.</summary>
        public int Device { get; set; }

        public OfflineMode Offline { get; set; }

        /// <summary>Most verbose level delivered to <see cref="Log"/> (default Info).</summary>
        public ReconLogLevel LogLevel { get; set; }

        /// <summary>
        /// Log sink, kept for the model's lifetime; called on the thread that called Load or Run.
        /// Exceptions it throws are swallowed (they cannot cross the native frames).
        /// </summary>
        public Action<ReconLogLevel, string> Log { get; set; }
    }

    /// <summary>Generation parameters. Starts with the library's defaults.</summary>
    public sealed class RunParams
    {
        /// <summary>A cfg strength that keeps pipeline.json's value (RECON_DEFAULT_CFG_STRENGTH).</summary>
        public const float DefaultCfgStrength = -1.0f;

        public RunParams()
        {
            var native = new NativeMethods.RunParams();
            NativeMethods.recon_run_params_init(ref native);
            SparseStructureSteps = native.sparse_structure_steps;
            Seed = native.seed;
            SparseStructureCfgStrength = native.sparse_structure_cfg_strength;
            SlatSteps = native.slat_steps;
            SlatCfgStrength = native.slat_cfg_strength;
            Formats = (OutputFormats)native.formats;
            MultiImageMode = (MultiImageMode)native.multi_image_mode;
            Preprocess = native.preprocess != 0;
        }

        /// <summary>Sparse-structure sampler steps; 0 keeps pipeline.json's.</summary>
        public uint SparseStructureSteps { get; set; }

        public ulong Seed { get; set; }

        public float SparseStructureCfgStrength { get; set; }

        /// <summary>Structured-latent sampler steps; 0 keeps pipeline.json's.</summary>
        public uint SlatSteps { get; set; }

        public float SlatCfgStrength { get; set; }

        public OutputFormats Formats { get; set; }

        public MultiImageMode MultiImageMode { get; set; }

        /// <summary>Crop and resize the inputs as the reference does.</summary>
        public bool Preprocess { get; set; }

        /// <summary>
        /// Progress reports, on the thread running <see cref="ReconModel.Run(ReconImage, RunParams, CancellationToken)"/>.
        /// Return false to cancel the run (it then throws a <see cref="ReconException"/> with
        /// <see cref="ReconStatus.Cancelled"/>). An exception thrown here cancels the run and is
        /// rethrown by Run.
        /// </summary>
        public Func<ReconProgress, bool> Progress { get; set; }

        internal NativeMethods.RunParams ToNative()
        {
            var native = new NativeMethods.RunParams();
            NativeMethods.recon_run_params_init(ref native);
            native.sparse_structure_steps = SparseStructureSteps;
            native.seed = Seed;
            native.sparse_structure_cfg_strength = SparseStructureCfgStrength;
            native.slat_steps = SlatSteps;
            native.slat_cfg_strength = SlatCfgStrength;
            native.formats = (uint)Formats;
            native.multi_image_mode = (int)MultiImageMode;
            native.preprocess = Preprocess ? 1 : 0;
            return native;
        }
    }

    /// <summary>One input view: encoded file bytes or raw pixels. The bytes are not copied.</summary>
    public sealed class ReconImage
    {
        private ReconImage(ImageFormat format, byte[] data, int width, int height, int stride)
        {
            if (data == null)
            {
                throw new ArgumentNullException("data");
            }
            Format = format;
            Data = data;
            Width = width;
            Height = height;
            Stride = stride;
        }

        public ImageFormat Format { get; private set; }

        public byte[] Data { get; private set; }

        public int Width { get; private set; }

        public int Height { get; private set; }

        /// <summary>Bytes from one row to the next; 0 means tightly packed.</summary>
        public int Stride { get; private set; }

        /// <summary>PNG, JPEG or WebP bytes.</summary>
        public static ReconImage Encoded(byte[] data)
        {
            return new ReconImage(ImageFormat.Encoded, data, 0, 0, 0);
        }

        /// <summary>The bytes of an image file.</summary>
        public static ReconImage FromFile(string path)
        {
            return Encoded(System.IO.File.ReadAllBytes(path));
        }

        /// <summary>Raw RGB pixels, rows top to bottom.</summary>
        public static ReconImage Rgb8(byte[] pixels, int width, int height, int stride = 0)
        {
            return new ReconImage(ImageFormat.Rgb8, pixels, width, height, stride);
        }

        /// <summary>Raw RGBA pixels (straight alpha), rows top to bottom.</summary>
        public static ReconImage Rgba8(byte[] pixels, int width, int height, int stride = 0)
        {
            return new ReconImage(ImageFormat.Rgba8, pixels, width, height, stride);
        }
    }

    /// <summary>A progress report: <see cref="Step"/> of <see cref="Total"/> in <see cref="Stage"/>.</summary>
    public struct ReconProgress
    {
        public ReconProgress(ReconStage stage, uint step, uint total)
        {
            Stage = stage;
            Step = step;
            Total = total;
        }

        public ReconStage Stage { get; private set; }

        public uint Step { get; private set; }

        public uint Total { get; private set; }

        public override string ToString()
        {
            return Stage + " " + Step + "/" + Total;
        }
    }

    /// <summary>One network of a loaded model.</summary>
    public sealed class NetworkInfo
    {
        internal NetworkInfo(string key, string className, string stem, bool implemented,
                             ulong numElements)
        {
            Key = key;
            ClassName = className;
            Stem = stem;
            Implemented = implemented;
            NumElements = numElements;
        }

        /// <summary>pipeline.json key, e.g. "sparse_structure_decoder".</summary>
        public string Key { get; private set; }

        /// <summary>Upstream class, e.g. "SparseStructureDecoder".</summary>
        public string ClassName { get; private set; }

        /// <summary>Checkpoint stem, e.g. "ckpts/ss_dec_conv3d_16l8_fp16".</summary>
        public string Stem { get; private set; }

        /// <summary>True when recon runs this network (false: checkpoint validated only).</summary>
        public bool Implemented { get; private set; }

        /// <summary>Elements stored in the checkpoint.</summary>
        public ulong NumElements { get; private set; }

        public override string ToString()
        {
            return Key + " (" + ClassName + ") " + Stem;
        }
    }

    /// <summary>
    /// 3D Gaussians (activated), copied out of a result: flat arrays, N entries of 3 (4 for
    /// rotations, 1 for opacities) floats each, in TRELLIS's Z-up frame.
    /// </summary>
    public sealed class ReconGaussians
    {
        internal ReconGaussians(int count, float[] positions, float[] featuresDc, float[] scales,
                           float[] rotations, float[] opacities)
        {
            Count = count;
            Positions = positions;
            FeaturesDc = featuresDc;
            Scales = scales;
            Rotations = rotations;
            Opacities = opacities;
        }

        /// <summary>Number of Gaussians N.</summary>
        public int Count { get; private set; }

        /// <summary>N×3 centres (x, y, z).</summary>
        public float[] Positions { get; private set; }

        /// <summary>N×3 SH DC colour coefficients.</summary>
        public float[] FeaturesDc { get; private set; }

        /// <summary>N×3 positive scales.</summary>
        public float[] Scales { get; private set; }

        /// <summary>N×4 unit quaternions (w, x, y, z).</summary>
        public float[] Rotations { get; private set; }

        /// <summary>N opacities in 0..1.</summary>
        public float[] Opacities { get; private set; }
    }

    /// <summary>
    /// A triangle mesh copied out of a result, in TRELLIS's frame: right-handed, Z up, metres,
    /// the object inside [-0.5, 0.5]^3, front faces counter-clockwise (the exports turn it Y-up;
    /// the Unity and Unreal packages convert it to their engines' frames).
    /// </summary>
    public sealed class ReconMesh
    {
        internal ReconMesh(int vertexCount, int faceCount, float[] positions, float[] colors,
                      uint[] indices)
        {
            VertexCount = vertexCount;
            FaceCount = faceCount;
            Positions = positions;
            Colors = colors;
            Indices = indices;
        }

        public int VertexCount { get; private set; }

        public int FaceCount { get; private set; }

        /// <summary>VertexCount×3 floats.</summary>
        public float[] Positions { get; private set; }

        /// <summary>VertexCount×3 RGB floats in 0..1, or null when the mesh has no colours.</summary>
        public float[] Colors { get; private set; }

        /// <summary>FaceCount×3 vertex indices.</summary>
        public uint[] Indices { get; private set; }
    }

    /// <summary>A camera recovered for one input view (OpenCV convention, camera-from-world).</summary>
    public sealed class ReconCamera
    {
        internal ReconCamera(int width, int height, float[] extrinsic, float[] intrinsic)
        {
            Width = width;
            Height = height;
            Extrinsic = extrinsic;
            Intrinsic = intrinsic;
        }

        public int Width { get; private set; }

        public int Height { get; private set; }

        /// <summary>3×4 row-major [R | t].</summary>
        public float[] Extrinsic { get; private set; }

        /// <summary>3×3 row-major intrinsics in pixels.</summary>
        public float[] Intrinsic { get; private set; }
    }
}
