// Example component: turns one or more Texture2D cut-outs into a vertex-coloured UnityEngine.Mesh
// on this GameObject's MeshFilter. The pixels are read on the main thread (Unity's API is
// main-thread only), the model is loaded and run on a worker task, progress is posted back to
// the main thread, and the mesh is built there. See README.md for the frame conversion
// (ReconUnityFrame) and what this file was (not) tested with.

using System;
using System.Threading;
using System.Threading.Tasks;
using UnityEngine;
using UnityEngine.Rendering;

namespace Recon.Unity
{
    [RequireComponent(typeof(MeshFilter))]
    public sealed class ReconMeshBuilder : MonoBehaviour
    {
        [Tooltip("Model directory (pipeline.json + ckpts/), relative to StreamingAssets unless rooted, or a Hugging Face repo id.")]
        public string modelPath = "TRELLIS-image-large";

        [Tooltip("RGBA cut-outs of one object (transparent background); Read/Write must be enabled in their import settings.")]
        public Texture2D[] inputs = new Texture2D[0];

        [Tooltip("-2: first CUDA device, else CPU; -1: CPU; >= 0: that CUDA device.")]
        public int device = ReconDevice.Auto;

        public int seed = 42;

        [Tooltip("0 keeps pipeline.json's sampler steps.")]
        public int sparseStructureSteps = 0;

        [Tooltip("0 keeps pipeline.json's sampler steps.")]
        public int slatSteps = 0;

        public bool buildOnStart = false;

        /// <summary>Raised on the main thread for each progress report.</summary>
        public event Action<ReconProgress> ProgressChanged;

        /// <summary>Raised on the main thread with the new mesh (also assigned to the MeshFilter).</summary>
        public event Action<UnityEngine.Mesh> MeshBuilt;

        /// <summary>Raised on the main thread when a build fails or is cancelled.</summary>
        public event Action<Exception> Failed;

        /// <summary>The latest progress report (main thread).</summary>
        public ReconProgress LastProgress { get; private set; }

        public bool IsBuilding
        {
            get { return task != null && !task.IsCompleted; }
        }

        private readonly object modelLock = new object();
        private ReconModel model;
        private string loadedPath;
        private CancellationTokenSource cancellation;
        private Task<ReconMesh> task;
        private UnityEngine.Mesh builtMesh;

        private void Start()
        {
            if (buildOnStart)
            {
                Build();
            }
        }

        /// <summary>Starts a build (main thread). Ignored while one is running.</summary>
        public void Build()
        {
            if (IsBuilding)
            {
                return;
            }
            if (inputs == null || inputs.Length == 0)
            {
                Debug.LogWarning("ReconMeshBuilder: no input textures");
                return;
            }

            var images = new ReconImage[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
            {
                images[i] = ToReconImage(inputs[i]);
            }

            SynchronizationContext mainThread = SynchronizationContext.Current;
            var parameters = new RunParams
            {
                Formats = OutputFormats.Mesh,
                Seed = (ulong)seed,
                SparseStructureSteps = (uint)Math.Max(0, sparseStructureSteps),
                SlatSteps = (uint)Math.Max(0, slatSteps),
                Progress = p =>
                {
                    mainThread.Post(_ => OnProgress(p), null);
                    return true;
                },
            };
            string path = ResolveModelPath(modelPath);
            int dev = device;

            cancellation = new CancellationTokenSource();
            CancellationToken token = cancellation.Token;
            task = Task.Run(() =>
            {
                ReconModel m = GetModel(path, dev, mainThread);
                using (ReconResult result = m.Run(images, parameters, token))
                {
                    return result.GetMesh();
                }
            }, token);
            task.ContinueWith(OnFinished, TaskScheduler.FromCurrentSynchronizationContext());
        }

        /// <summary>Cancels the running build (any thread); it fails with ReconStatus.Cancelled.</summary>
        public void Cancel()
        {
            CancellationTokenSource cts = cancellation;
            if (cts != null)
            {
                cts.Cancel();
            }
        }

        private void OnDestroy()
        {
            Cancel();
            // A run in progress keeps the native model alive until it returns (SafeHandle), so
            // disposing here is safe; the native free happens after the run has stopped.
            lock (modelLock)
            {
                if (model != null)
                {
                    model.Dispose();
                    model = null;
                }
            }
            if (builtMesh != null)
            {
                Destroy(builtMesh);
            }
        }

        /// <summary>A readable texture as top-down RGBA8 pixels (GetPixels32 is bottom-up).</summary>
        private static ReconImage ToReconImage(Texture2D texture)
        {
            if (texture == null)
            {
                throw new ArgumentNullException("texture", "ReconMeshBuilder: an input texture is missing");
            }
            if (!texture.isReadable)
            {
                throw new ArgumentException("ReconMeshBuilder: enable Read/Write on texture '" + texture.name + "'");
            }
            Color32[] pixels = texture.GetPixels32();
            var bytes = new byte[pixels.Length * 4];
            for (int i = 0; i < pixels.Length; i++)
            {
                bytes[4 * i] = pixels[i].r;
                bytes[4 * i + 1] = pixels[i].g;
                bytes[4 * i + 2] = pixels[i].b;
                bytes[4 * i + 3] = pixels[i].a;
            }
            byte[] topDown = ReconUnityFrame.FlipRows(bytes, texture.width, texture.height);
            return ReconImage.Rgba8(topDown, texture.width, texture.height);
        }

        private static string ResolveModelPath(string path)
        {
            if (string.IsNullOrEmpty(path) || System.IO.Path.IsPathRooted(path))
            {
                return path;
            }
            string local = System.IO.Path.Combine(Application.streamingAssetsPath, path);
            // Not a local directory: pass it on as a Hub repo id ("owner/name").
            return System.IO.Directory.Exists(local) ? local : path;
        }

        /// <summary>Loads the model once (worker thread) and keeps it for later builds.</summary>
        private ReconModel GetModel(string path, int dev, SynchronizationContext mainThread)
        {
            lock (modelLock)
            {
                if (model != null && loadedPath == path)
                {
                    return model;
                }
                if (model != null)
                {
                    model.Dispose();
                    model = null;
                }
                var parameters = new LoadParams
                {
                    Model = path,
                    Device = dev,
                    Log = (level, message) => mainThread.Post(_ => Log(level, message), null),
                };
                model = ReconModel.Load(parameters);
                loadedPath = path;
                return model;
            }
        }

        private static void Log(ReconLogLevel level, string message)
        {
            if (level == ReconLogLevel.Error)
            {
                Debug.LogError("recon: " + message);
            }
            else if (level == ReconLogLevel.Warn)
            {
                Debug.LogWarning("recon: " + message);
            }
            else
            {
                Debug.Log("recon: " + message);
            }
        }

        private void OnProgress(ReconProgress progress)
        {
            LastProgress = progress;
            Action<ReconProgress> handler = ProgressChanged;
            if (handler != null)
            {
                handler(progress);
            }
        }

        private void OnFinished(Task<ReconMesh> finished)
        {
            if (this == null)
            {
                return; // destroyed while the build ran
            }
            if (finished.IsCanceled || finished.IsFaulted)
            {
                Exception error = finished.IsCanceled
                    ? new OperationCanceledException("ReconMeshBuilder: build cancelled before it started")
                    : finished.Exception.GetBaseException();
                var recon = error as ReconException;
                if (recon != null && recon.Status == ReconStatus.Cancelled)
                {
                    Debug.Log("ReconMeshBuilder: cancelled");
                }
                else
                {
                    Debug.LogException(error);
                }
                Action<Exception> failed = Failed;
                if (failed != null)
                {
                    failed(error);
                }
                return;
            }
            UnityEngine.Mesh mesh = ToUnityMesh(finished.Result);
            if (builtMesh != null)
            {
                Destroy(builtMesh);
            }
            builtMesh = mesh;
            GetComponent<MeshFilter>().sharedMesh = mesh;
            Action<UnityEngine.Mesh> built = MeshBuilt;
            if (built != null)
            {
                built(mesh);
            }
        }

        /// <summary>
        /// recon's mesh (TRELLIS frame: right-handed, Z up) as a Unity mesh (left-handed, Y up):
        /// positions (x, z, y), winding reversed, vertex colours as Color32.
        /// </summary>
        public static UnityEngine.Mesh ToUnityMesh(ReconMesh source)
        {
            float[] p = ReconUnityFrame.Positions(source.Positions);
            var vertices = new Vector3[source.VertexCount];
            for (int i = 0; i < vertices.Length; i++)
            {
                vertices[i] = new Vector3(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
            }
            var mesh = new UnityEngine.Mesh();
            mesh.name = "recon mesh";
            // 16-bit indices stop at 65535 vertices; TRELLIS meshes are usually larger.
            mesh.indexFormat = vertices.Length > 65535 ? IndexFormat.UInt32 : IndexFormat.UInt16;
            mesh.vertices = vertices;
            byte[] rgba = ReconUnityFrame.Colors32(source.Colors);
            if (rgba != null)
            {
                var colors = new Color32[source.VertexCount];
                for (int i = 0; i < colors.Length; i++)
                {
                    colors[i] = new Color32(rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2], rgba[4 * i + 3]);
                }
                mesh.colors32 = colors;
            }
            mesh.triangles = ReconUnityFrame.Triangles(source.Indices);
            mesh.RecalculateNormals();
            mesh.RecalculateBounds();
            return mesh;
        }
    }
}
