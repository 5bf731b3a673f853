// ReconModel: a loaded pipeline (recon_model*). Load, introspection, Run with progress and
// CancellationToken, Cancel, Dispose. The native callbacks are static methods carrying
// [MonoPInvokeCallback] with a GCHandle as user data, the form IL2CPP requires.

using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;

namespace Recon
{
    /// <summary>
    /// A loaded pipeline. Usable from any thread; runs on one model are serialised by the
    /// library (a second caller waits), so load one model per worker for parallel runs.
    /// </summary>
    public sealed class ReconModel : IDisposable
    {
        private readonly ModelHandle handle;

        private ReconModel(ModelHandle handle)
        {
            this.handle = handle;
        }

        /// <summary>Loads a local model directory or a Hub repo id with default parameters.</summary>
        public static ReconModel Load(string model)
        {
            return Load(new LoadParams { Model = model });
        }

        /// <summary>Loads a pipeline; throws <see cref="ReconException"/> on failure.</summary>
        public static ReconModel Load(LoadParams parameters)
        {
            if (parameters == null)
            {
                throw new ArgumentNullException("parameters");
            }
            ReconLibrary.EnsureCompatible();

            var native = new NativeMethods.LoadParams();
            NativeMethods.recon_load_params_init(ref native);
            native.device = parameters.Device;
            native.offline = (int)parameters.Offline;
            native.log_level = (int)parameters.LogLevel;

            byte[] modelUtf8 = Utf8.ToNative(parameters.Model);
            GCHandle modelPin = modelUtf8 != null ? GCHandle.Alloc(modelUtf8, GCHandleType.Pinned) : default(GCHandle);
            GCHandle logSink = default(GCHandle);
            var error = new byte[2048];
            ModelHandle model = null;
            int status;
            try
            {
                native.model = modelPin.IsAllocated ? modelPin.AddrOfPinnedObject() : IntPtr.Zero;
                if (parameters.Log != null)
                {
                    logSink = GCHandle.Alloc(parameters.Log);
                    native.log_callback = Callbacks.LogPointer;
                    native.log_user_data = GCHandle.ToIntPtr(logSink);
                }
                status = NativeMethods.recon_load(ref native, out model, error, (UIntPtr)error.Length);
                if (status == (int)ReconStatus.Ok)
                {
                    // From here the handle frees the sink, after recon_free.
                    model.LogSink = logSink;
                    logSink = default(GCHandle);
                }
            }
            finally
            {
                if (modelPin.IsAllocated)
                {
                    modelPin.Free();
                }
                if (logSink.IsAllocated)
                {
                    logSink.Free();
                }
            }
            if (status != (int)ReconStatus.Ok)
            {
                if (model != null)
                {
                    model.Dispose();
                }
                throw new ReconException((ReconStatus)status, Utf8.FromBuffer(error));
            }
            return new ReconModel(model);
        }

        /// <summary>The pipeline's name from pipeline.json, e.g. "TrellisImageTo3DPipeline".</summary>
        public string PipelineName
        {
            get { return Utf8.FromNative(NativeMethods.recon_model_pipeline_name(Handle)); }
        }

        /// <summary>The device the model runs on: <see cref="ReconDevice.Cpu"/> or a CUDA index.</summary>
        public int Device
        {
            get { return NativeMethods.recon_model_device(Handle); }
        }

        /// <summary>The message of the latest failed call on this model ("" when none).</summary>
        public string LastError
        {
            get { return Utf8.FromNative(NativeMethods.recon_model_last_error(Handle)); }
        }

        /// <summary>Number of networks the model loaded.</summary>
        public int NetworkCount
        {
            get { return checked((int)(ulong)NativeMethods.recon_model_num_networks(Handle)); }
        }

        /// <summary>Describes network <paramref name="index"/>; throws for an index out of range.</summary>
        public NetworkInfo GetNetwork(int index)
        {
            var info = new NativeMethods.NetworkInfo();
            info.struct_size = (uint)Marshal.SizeOf(typeof(NativeMethods.NetworkInfo));
            if (index < 0)
            {
                throw new ArgumentOutOfRangeException("index", index, "network index is negative");
            }
            int status = NativeMethods.recon_model_network(Handle, (UIntPtr)(ulong)index, ref info);
            ReconLibrary.Check(status, () => LastError);
            return new NetworkInfo(Utf8.FromNative(info.key), Utf8.FromNative(info.class_name),
                                   Utf8.FromNative(info.stem), info.implemented != 0,
                                   info.num_elements);
        }

        /// <summary>Every network, in the library's order.</summary>
        public IReadOnlyList<NetworkInfo> Networks
        {
            get
            {
                int n = NetworkCount;
                var list = new List<NetworkInfo>(n);
                for (int i = 0; i < n; i++)
                {
                    list.Add(GetNetwork(i));
                }
                return list.AsReadOnly();
            }
        }

        /// <summary>
        /// Asks the run in progress on this model to stop (it then throws a <see
        /// cref="ReconException"/> with <see cref="ReconStatus.Cancelled"/>). Any thread; no
        /// effect when no run is active.
        /// </summary>
        public void Cancel()
        {
            NativeMethods.recon_cancel(Handle);
        }

        /// <summary>Generates a 3D asset from one view; see <see cref="Run(IList{ReconImage}, RunParams, CancellationToken)"/>.</summary>
        public ReconResult Run(ReconImage image, RunParams parameters = null,
                               CancellationToken cancellation = default(CancellationToken))
        {
            if (image == null)
            {
                throw new ArgumentNullException("image");
            }
            return Run(new[] { image }, parameters, cancellation);
        }

        /// <summary>
        /// Generates a 3D asset from views of one object, on the calling thread (wrap it in
        /// Task.Run to keep a UI thread free). <paramref name="cancellation"/> calls
        /// recon_cancel when cancelled; the run then throws a <see cref="ReconException"/> with
        /// <see cref="ReconStatus.Cancelled"/>. Throws <see cref="ReconException"/> on failure.
        /// </summary>
        public ReconResult Run(IList<ReconImage> images, RunParams parameters = null,
                               CancellationToken cancellation = default(CancellationToken))
        {
            if (images == null)
            {
                throw new ArgumentNullException("images");
            }
            if (parameters == null)
            {
                parameters = new RunParams();
            }
            ModelHandle model = Handle;
            var views = new NativeMethods.Image[images.Count];
            var pins = new GCHandle[images.Count];
            GCHandle stateHandle = default(GCHandle);
            try
            {
                for (int i = 0; i < views.Length; i++)
                {
                    ReconImage image = images[i];
                    if (image == null)
                    {
                        throw new ArgumentNullException("images", "images[" + i + "] is null");
                    }
                    pins[i] = GCHandle.Alloc(image.Data, GCHandleType.Pinned);
                    NativeMethods.recon_image_init(ref views[i]);
                    views[i].format = (int)image.Format;
                    views[i].data = pins[i].AddrOfPinnedObject();
                    views[i].size = (UIntPtr)(ulong)image.Data.Length;
                    views[i].width = (uint)image.Width;
                    views[i].height = (uint)image.Height;
                    views[i].stride = (UIntPtr)(ulong)image.Stride;
                }

                NativeMethods.RunParams native = parameters.ToNative();
                var state = new RunState(parameters.Progress, cancellation);
                if (parameters.Progress != null || cancellation.CanBeCanceled)
                {
                    stateHandle = GCHandle.Alloc(state);
                    native.progress_callback = Callbacks.ProgressPointer;
                    native.progress_user_data = GCHandle.ToIntPtr(stateHandle);
                }

                ResultHandle result;
                int status;
                // The registration calls recon_cancel on the cancelling thread. A cancel that
                // lands before recon_run has cleared its flag is caught by the progress callback,
                // which checks the token first.
                using (cancellation.Register(CancelModel, model))
                {
                    status = NativeMethods.recon_run(model, views, (UIntPtr)(ulong)views.Length,
                                                     ref native, out result);
                }
                if (state.Error != null)
                {
                    if (result != null)
                    {
                        result.Dispose();
                    }
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(state.Error).Throw();
                }
                if (status != (int)ReconStatus.Ok)
                {
                    if (result != null)
                    {
                        result.Dispose();
                    }
                    throw new ReconException((ReconStatus)status, LastError);
                }
                return new ReconResult(result);
            }
            finally
            {
                for (int i = 0; i < pins.Length; i++)
                {
                    if (pins[i].IsAllocated)
                    {
                        pins[i].Free();
                    }
                }
                if (stateHandle.IsAllocated)
                {
                    stateHandle.Free();
                }
            }
        }

        /// <summary>Frees the model. A run in progress on another thread finishes first.</summary>
        public void Dispose()
        {
            handle.Dispose();
        }

        private ModelHandle Handle
        {
            get
            {
                if (handle.IsClosed)
                {
                    throw new ObjectDisposedException("ReconModel");
                }
                return handle;
            }
        }

        private static void CancelModel(object model)
        {
            var h = (ModelHandle)model;
            if (!h.IsClosed)
            {
                NativeMethods.recon_cancel(h);
            }
        }

        /// <summary>What the progress callback of one run needs, reached through a GCHandle.</summary>
        private sealed class RunState
        {
            internal RunState(Func<ReconProgress, bool> progress, CancellationToken cancellation)
            {
                Progress = progress;
                Cancellation = cancellation;
            }

            internal readonly Func<ReconProgress, bool> Progress;
            internal readonly CancellationToken Cancellation;
            internal Exception Error;
        }

        /// <summary>The native callbacks: static, attributed, kept alive for the process.</summary>
        private static class Callbacks
        {
            private static readonly NativeMethods.LogCallback LogDelegate = OnLog;
            private static readonly NativeMethods.ProgressCallback ProgressDelegate = OnProgress;

            internal static readonly IntPtr LogPointer = Marshal.GetFunctionPointerForDelegate(LogDelegate);
            internal static readonly IntPtr ProgressPointer = Marshal.GetFunctionPointerForDelegate(ProgressDelegate);

            [MonoPInvokeCallback(typeof(NativeMethods.LogCallback))]
            private static void OnLog(int level, IntPtr message, IntPtr userData)
            {
                try
                {
                    var sink = (Action<ReconLogLevel, string>)GCHandle.FromIntPtr(userData).Target;
                    sink((ReconLogLevel)level, Utf8.FromNative(message));
                }
                catch (Exception)
                {
                    // An exception must not unwind into native frames; a log sink's failure is
                    // not the run's.
                }
            }

            [MonoPInvokeCallback(typeof(NativeMethods.ProgressCallback))]
            private static int OnProgress(IntPtr progress, IntPtr userData)
            {
                RunState state = null;
                try
                {
                    state = (RunState)GCHandle.FromIntPtr(userData).Target;
                    if (state.Cancellation.IsCancellationRequested)
                    {
                        return 0;
                    }
                    if (state.Progress == null)
                    {
                        return 1;
                    }
                    var p = (NativeMethods.Progress)Marshal.PtrToStructure(progress, typeof(NativeMethods.Progress));
                    return state.Progress(new ReconProgress((ReconStage)p.stage, p.step, p.total)) ? 1 : 0;
                }
                catch (Exception e)
                {
                    // Stop the run; Run rethrows the exception on the caller's thread.
                    if (state != null)
                    {
                        state.Error = e;
                    }
                    return 0;
                }
            }
        }
    }
}
