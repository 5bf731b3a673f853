// Marks the static methods that native code calls back (log and progress callbacks).
//
// Unity's IL2CPP (and Mono's full-AOT) only generate a native entry point for a managed method
// handed to native code when the method carries an attribute *named*
// MonoPInvokeCallbackAttribute; the namespace does not matter. Defining it here keeps this
// assembly free of UnityEngine (AOT.MonoPInvokeCallbackAttribute) and Xamarin
// (ObjCRuntime.MonoPInvokeCallbackAttribute) references. On the JIT runtimes (desktop Mono,
// .NET) it is inert.

using System;

namespace Recon
{
    [AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
    internal sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type delegateType)
        {
            DelegateType = delegateType;
        }

        /// <summary>The delegate type the native side calls the method through.</summary>
        public Type DelegateType { get; private set; }
    }
}
