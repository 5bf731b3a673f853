// P/Invoke declarations for include/recon.h (ABI version 1). Internal: the public surface is
// ReconModel / ReconResult / ReconLibrary. The struct layouts mirror the C structs field by
// field (LP64 and Windows x64 sizes are checked by the test against the C test's table); size_t
// maps to UIntPtr, pointers and callbacks to IntPtr.
//
// Kept C# 7.3-compatible and free of `unsafe` so that the same file compiles in Unity (Mono and
// IL2CPP) and under Debian's mcs. This file is duplicated verbatim in
// bindings/unity/Runtime/ (bindings/csharp/Makefile's `check-unity` target compares them).

using System;
using System.Runtime.InteropServices;

namespace Recon
{
    internal static class NativeMethods
    {
#if (UNITY_IOS || UNITY_WEBGL) && !UNITY_EDITOR
        // Statically linked into the player on these platforms.
        internal const string Library = "__Internal";
#else
        // Resolved as librecon.so (Linux, via LD_LIBRARY_PATH or the Unity Plugins folder),
        // librecon.dylib (macOS) or recon.dll (Windows).
        internal const string Library = "recon";
#endif

        internal const uint AbiVersion = 1;

        // ------------------------------------------------------------------ structs

        [StructLayout(LayoutKind.Sequential)]
        internal struct LoadParams
        {
            public uint struct_size;
            public int device;
            public IntPtr model;          // const char*, UTF-8
            public int offline;
            public int log_level;
            public IntPtr log_callback;   // recon_log_callback
            public IntPtr log_user_data;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct NetworkInfo
        {
            public uint struct_size;
            public int implemented;
            public ulong num_elements;
            public IntPtr key;
            public IntPtr class_name;
            public IntPtr stem;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Gaussians
        {
            public uint struct_size;
            public UIntPtr count;
            public IntPtr xyz;
            public IntPtr features_dc;
            public IntPtr scaling;
            public IntPtr rotation;
            public IntPtr opacity;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Mesh
        {
            public uint struct_size;
            public UIntPtr num_vertices;
            public IntPtr positions;
            public IntPtr colors;
            public UIntPtr num_faces;
            public IntPtr indices;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Camera
        {
            public uint struct_size;
            public uint width;
            public uint height;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 12)]
            public float[] extrinsic;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 9)]
            public float[] intrinsic;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Progress
        {
            public uint struct_size;
            public int stage;
            public uint step;
            public uint total;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct RunParams
        {
            public uint struct_size;
            public uint sparse_structure_steps;
            public ulong seed;
            public float sparse_structure_cfg_strength;
            public uint slat_steps;
            public float slat_cfg_strength;
            public uint formats;
            public int multi_image_mode;
            public int preprocess;
            public IntPtr progress_callback;  // recon_progress_callback
            public IntPtr progress_user_data;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct Image
        {
            public uint struct_size;
            public int format;
            public IntPtr data;
            public UIntPtr size;
            public uint width;
            public uint height;
            public UIntPtr stride;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct TexturedExportParams
        {
            public uint struct_size;
            public int image_format;          // RECON_TEXTURE_*
            public float simplify;
            public int fill_holes;
            public float fill_holes_max_size;
            public uint texture_size;
            public int bake_mode;             // RECON_BAKE_*
            public uint bake_steps;
            public float bake_lambda_tv;
            public uint views;
            public uint render_resolution;
            public int vertex_colors_only;
            public uint jpeg_quality;
            public int device;
            public uint fill_holes_views;
            public uint fill_holes_resolution;
            public ulong seed;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct TurntableParams
        {
            public uint struct_size;
            public int content;               // RECON_TURNTABLE_*
            public uint frames;
            public uint resolution;
            public float radius;
            public float fov_degrees;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 3)]
            public float[] background;        // RGB in 0..1
            public int device;
            public uint fps;
            public uint mesh_ssaa;
        }

        // Valid only during the FrameCallback (read it with Marshal.PtrToStructure).
        [StructLayout(LayoutKind.Sequential)]
        internal struct Frame
        {
            public uint struct_size;
            public uint index;
            public uint count;
            public uint width;
            public uint height;
            public IntPtr rgba;               // const uint8_t*, width * height * 4 bytes
        }

        // ------------------------------------------------------------------ callbacks

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        internal delegate void LogCallback(int level, IntPtr message, IntPtr userData);

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        internal delegate int ProgressCallback(IntPtr progress, IntPtr userData);

        // recon_frame_callback: `frame` points to a Frame; return nonzero to go on, 0 to stop.
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        internal delegate int FrameCallback(IntPtr frame, IntPtr userData);

        // ------------------------------------------------------------------ model

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_load_params_init(ref LoadParams p);

        // The v2 initialiser (size-aware); this binding's LoadParams is the v1 struct, which the
        // plain initialiser above fills exactly.
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_load_params_init_sized(ref LoadParams p, UIntPtr size);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_load(ref LoadParams p, out ModelHandle model,
                                              byte[] errorBuf, UIntPtr errorBufLen);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_free(IntPtr model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_model_last_error(ModelHandle model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_cancel(ModelHandle model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_model_pipeline_name(ModelHandle model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_model_device(ModelHandle model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern UIntPtr recon_model_num_networks(ModelHandle model);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_model_network(ModelHandle model, UIntPtr index,
                                                       ref NetworkInfo info);

        // ------------------------------------------------------------------ run

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_run_params_init(ref RunParams p);

        // The v2 initialiser (size-aware); this binding's RunParams is the v1 struct, which the
        // plain initialiser above fills exactly (v1 never removes backgrounds).
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_run_params_init_sized(ref RunParams p, UIntPtr size);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_image_init(ref Image image);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_run(ModelHandle model, [In] Image[] images,
                                             UIntPtr numImages, ref RunParams p,
                                             out ResultHandle result);

        // ------------------------------------------------------------------ result

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_result_free(IntPtr result);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_result_last_error(ResultHandle result);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_gaussians(ResultHandle result, ref Gaussians g);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_mesh(ResultHandle result, ref Mesh m);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern UIntPtr recon_result_num_cameras(ResultHandle result);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_camera(ResultHandle result, UIntPtr index,
                                                       ref Camera camera);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_camera_matrices(ResultHandle result, UIntPtr index,
                                                                [Out] float[] extrinsic4x4,
                                                                [Out] float[] intrinsic3x3);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_export(ResultHandle result, int format,
                                                       byte[] pathUtf8);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_export_buffer(ResultHandle result, int format,
                                                              out BufferHandle buffer);

        // ------------------------------------------------------------------ textured export

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_textured_export_params_init(ref TexturedExportParams p);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_textured_export_params_init_sized(ref TexturedExportParams p,
                                                                           UIntPtr size);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_export_textured(ResultHandle result, int format,
                                                                ref TexturedExportParams p,
                                                                byte[] pathUtf8);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_export_textured_buffer(ResultHandle result, int format,
                                                                       ref TexturedExportParams p,
                                                                       out BufferHandle buffer);

        // ------------------------------------------------------------------ turntable

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_turntable_params_init(ref TurntableParams p);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_turntable_params_init_sized(ref TurntableParams p, UIntPtr size);

        // `callback`: a recon_frame_callback (Marshal.GetFunctionPointerForDelegate of a
        // FrameCallback), called on this thread before the call returns.
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_render_turntable(ResultHandle result, ref TurntableParams p,
                                                                 IntPtr callback, IntPtr userData);

        // `callback` may be IntPtr.Zero (NULL).
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_result_write_turntable(ResultHandle result, ref TurntableParams p,
                                                                byte[] pathUtf8, IntPtr callback,
                                                                IntPtr userData);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_mp4_supported();

        // ------------------------------------------------------------------ buffer

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_buffer_data(BufferHandle buffer);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern UIntPtr recon_buffer_size(BufferHandle buffer);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void recon_buffer_free(IntPtr buffer);

        // ------------------------------------------------------------------ library

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern uint recon_abi_version();

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_version_string();

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern IntPtr recon_status_string(int status);

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int recon_cuda_device_count();
    }
}
