// A stand-in for the few UnityEngine members bindings/unity/Runtime/ReconMeshBuilder.cs uses,
// written from Unity's documented signatures, so that `make check-unity-example` can type-check
// that file with mcs where no UnityEngine.dll exists. It proves the file is valid C# against
// these signatures and the Recon API, nothing more: it is not Unity, and nothing here runs.

using System;

namespace UnityEngine
{
    public class Object
    {
        public string name { get; set; }
        public static void Destroy(Object obj) { }
        public static bool operator ==(Object a, Object b) { return ReferenceEquals(a, b); }
        public static bool operator !=(Object a, Object b) { return !ReferenceEquals(a, b); }
        public static implicit operator bool(Object o) { return !ReferenceEquals(o, null); }
        public override bool Equals(object other) { return ReferenceEquals(this, other); }
        public override int GetHashCode() { return 0; }
    }

    public class Component : Object
    {
        public T GetComponent<T>() { return default(T); }
    }

    public class Behaviour : Component { }

    public class MonoBehaviour : Behaviour { }

    public class MeshFilter : Component
    {
        public Mesh sharedMesh { get; set; }
    }

    public class Texture : Object
    {
        public int width { get { return 0; } }
        public int height { get { return 0; } }
        public bool isReadable { get { return true; } }
    }

    public sealed class Texture2D : Texture
    {
        public Color32[] GetPixels32() { return new Color32[0]; }
    }

    public struct Color32
    {
        public byte r, g, b, a;
        public Color32(byte r, byte g, byte b, byte a) { this.r = r; this.g = g; this.b = b; this.a = a; }
    }

    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
    }

    public sealed class Mesh : Object
    {
        public Rendering.IndexFormat indexFormat { get; set; }
        public Vector3[] vertices { get; set; }
        public Color32[] colors32 { get; set; }
        public int[] triangles { get; set; }
        public void RecalculateNormals() { }
        public void RecalculateBounds() { }
    }

    public static class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
        public static void LogError(object message) { }
        public static void LogException(Exception exception) { }
    }

    public static class Application
    {
        public static string streamingAssetsPath { get { return ""; } }
    }

    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute
    {
        public RequireComponent(Type requiredComponent) { }
    }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class TooltipAttribute : Attribute
    {
        public TooltipAttribute(string tooltip) { }
    }
}

namespace UnityEngine.Rendering
{
    public enum IndexFormat
    {
        UInt16 = 0,
        UInt32 = 1,
    }
}
