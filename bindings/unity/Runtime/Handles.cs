// SafeHandle subclasses for the three library-owned handles. Passing them (rather than IntPtr)
// to the P/Invoke declarations makes the runtime hold a reference for the duration of each call,
// so a Dispose on another thread cannot free a model or result under a running call: the free
// happens when the last call returns.

using System;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Recon
{
    /// <summary>Owns a <c>recon_model*</c>, and the log sink the library keeps for it.</summary>
    internal sealed class ModelHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        // Public so that the interop marshaller can create it for `out` parameters.
        public ModelHandle() : base(true)
        {
        }

        /// <summary>
        /// The GCHandle passed as the model's log_user_data; freed after recon_free, when the
        /// library can no longer call the log callback.
        /// </summary>
        internal GCHandle LogSink;

        protected override bool ReleaseHandle()
        {
            NativeMethods.recon_free(handle);
            if (LogSink.IsAllocated)
            {
                LogSink.Free();
            }
            return true;
        }
    }

    /// <summary>Owns a <c>recon_result*</c>.</summary>
    internal sealed class ResultHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public ResultHandle() : base(true)
        {
        }

        protected override bool ReleaseHandle()
        {
            NativeMethods.recon_result_free(handle);
            return true;
        }
    }

    /// <summary>Owns a <c>recon_buffer*</c> (an export in memory); never leaves the binding.</summary>
    internal sealed class BufferHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public BufferHandle() : base(true)
        {
        }

        protected override bool ReleaseHandle()
        {
            NativeMethods.recon_buffer_free(handle);
            return true;
        }
    }
}
