//! Writers for textured meshes ([`TexturedMesh`], from `postprocessing`): a GLB with a
//! base-colour texture, and OBJ + MTL + texture image.
//!
//! # GLB
//!
//! Laid out like the untextured GLB (`glb.rs`: one buffer, one mesh, one node, Y-up), with:
//! - `POSITION`, `NORMAL` (rotated with the positions), `TEXCOORD_0` (float UVs in [0, 1],
//!   stored as `TexturedMesh` holds them: glTF's convention, v down the image) and u32 indices;
//! - the texture image (PNG by default, JPEG or WebP on request) in the BIN chunk, referenced by
//!   `images[0].bufferView`; a sampler with trilinear minification and bilinear
//!   magnification, clamped at the edges; WebP goes through the `EXT_texture_webp` extension
//!   (listed as used and required: glTF core knows only PNG and JPEG);
//! - a material `baseColorTexture` × white, **`metallicFactor` 0**, `roughnessFactor` 1. The
//!   reference sets only the roughness and so inherits glTF's default metallic 1.0: a metal
//!   with a dark base reflects only its environment, which is why users find its textures too
//!   dark (TRELLIS issue #103).
//! - Colour space: glTF requires base-colour textures to be sRGB-encoded. The baked texels
//!   are the Gaussian renders' display values (the model learnt them from ordinary sRGB
//!   images), i.e. already sRGB-encoded, so they are stored unchanged: a viewer decodes them
//!   to linear for shading and shows them as rendered. Converting them (e.g. `pow(x, 1/2.2)`,
//!   the workaround users apply to TRELLIS's GLBs) would wash them out.
//! - Without a texture (vertex colours only), the colours go to `COLOR_0` converted to linear
//!   as in the untextured GLB (glTF vertex colours are linear).
//!
//! # OBJ + MTL + texture
//!
//! Three files side by side: `name.obj` (`mtllib name.mtl`, `v`/`vt`/`vn` per vertex sharing
//! one index, `f a/a/a b/b/b c/c/c`), `name.mtl` (one material: `map_Kd name.png`, white
//! diffuse, no specular, plus the PBR extension lines `Pr 1` and `Pm 0` that Blender and
//! others read) and the image. OBJ's `vt` has v pointing *up* the image, so it is written as
//! `1 − v`. They are written as a set ([`super::atomic::write_set_atomically`]): all three are
//! completed in temporary files first, then renamed into place, the OBJ last, so a reader who
//! finds the new OBJ finds its MTL and texture. Without a texture, a single OBJ with vertex
//! colours is written (no MTL, as for untextured meshes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::pipeline::Camera;
use crate::postprocessing::TexturedMesh;

use super::glb::{
    add_cameras, assemble, one_mesh_document, pad_to_4, push_view, srgb_to_linear, vec3_bytes,
    GltfCamera, Primitive, ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, UNSIGNED_INT,
};
use super::mesh_frame;

/// glTF sampler enums.
const LINEAR: u32 = 9729;
const LINEAR_MIPMAP_LINEAR: u32 = 9987;
const CLAMP_TO_EDGE: u32 = 33071;
/// The glTF extension for WebP images.
const EXT_WEBP: &str = "EXT_texture_webp";

/// How the texture image is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImageFormat {
    /// Lossless PNG (the default; what the reference writes).
    #[default]
    Png,
    /// Baseline JPEG at `quality` (1..=100).
    Jpeg { quality: u8 },
    /// Lossless WebP (the `image` crate encodes WebP losslessly only); in GLB through
    /// `EXT_texture_webp`.
    WebP,
}

impl ImageFormat {
    /// The MIME type glTF names images by.
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg { .. } => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }

    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg { .. } => "jpg",
            Self::WebP => "webp",
        }
    }
}

/// Encodes an RGB image.
pub fn encode_image(image: &image::RgbImage, format: ImageFormat) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::invalid_argument("texture image is empty"));
    }
    let mut out = Vec::new();
    let failed = |e: image::ImageError| Error::internal(format!("encoding the texture: {e}"));
    let color = image::ExtendedColorType::Rgb8;
    match format {
        ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut out)
            .write_image(image.as_raw(), w, h, color)
            .map_err(failed)?,
        ImageFormat::Jpeg { quality } => {
            if !(1..=100).contains(&quality) {
                return Err(Error::invalid_argument(format!(
                    "JPEG quality must be in 1..=100, found {quality}"
                )));
            }
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(image.as_raw(), w, h, color)
                .map_err(failed)?
        }
        ImageFormat::WebP => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(image.as_raw(), w, h, color)
            .map_err(failed)?,
    }
    Ok(out)
}

/// Checks a textured mesh's arrays against each other: positions, normals `[V, 3]`, UVs
/// `[V, 2]` in [0, 1] when there is a texture (and none without), colours empty or `[V, 3]`,
/// indices below V, finite values.
pub fn check_textured_mesh(mesh: &TexturedMesh) -> Result<()> {
    let bad = |what: String| Err(Error::invalid_argument(format!("textured mesh: {what}")));
    if !mesh.positions.len().is_multiple_of(3) || !mesh.indices.len().is_multiple_of(3) {
        return bad(format!(
            "{} position values and {} indices, expected multiples of 3",
            mesh.positions.len(),
            mesh.indices.len()
        ));
    }
    let v = mesh.vertex_count();
    if mesh.normals.len() != 3 * v {
        return bad(format!(
            "{} normal values for {v} vertices",
            mesh.normals.len()
        ));
    }
    if !mesh.colors.is_empty() && mesh.colors.len() != 3 * v {
        return bad(format!(
            "{} colour values for {v} vertices",
            mesh.colors.len()
        ));
    }
    match &mesh.texture {
        Some(texture) => {
            if mesh.uvs.len() != 2 * v {
                return bad(format!("{} UV values for {v} vertices", mesh.uvs.len()));
            }
            if texture.width() == 0 || texture.height() == 0 {
                return bad("the texture is empty".into());
            }
        }
        None if !mesh.uvs.is_empty() => return bad("UVs without a texture".into()),
        None => {}
    }
    for (name, values) in [
        ("positions", &mesh.positions),
        ("normals", &mesh.normals),
        ("colors", &mesh.colors),
    ] {
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return bad(format!("{name}[{i}] is {}, expected finite", values[i]));
        }
    }
    if let Some(i) = mesh
        .uvs
        .iter()
        .position(|x| !(x.is_finite() && (0.0..=1.0).contains(x)))
    {
        return bad(format!("uvs[{i}] is {}, expected in [0, 1]", mesh.uvs[i]));
    }
    if let Some(&i) = mesh.indices.iter().find(|&&i| i as usize >= v) {
        return bad(format!("index {i} out of range for {v} vertices"));
    }
    Ok(())
}

/// Encodes a textured mesh as GLB (see the module documentation), with `cameras` as glTF
/// cameras as [`super::glb::mesh_to_glb_with_cameras`] adds them.
pub fn textured_mesh_to_glb(
    mesh: &TexturedMesh,
    image_format: ImageFormat,
    cameras: &[Camera],
) -> Result<Vec<u8>> {
    check_textured_mesh(mesh)?;
    if mesh.indices.is_empty() {
        return Err(Error::invalid_argument(
            "textured mesh: no triangles to write",
        ));
    }
    let cameras = cameras
        .iter()
        .enumerate()
        .map(|(i, camera)| GltfCamera::new(i, camera))
        .collect::<Result<Vec<_>>>()?;
    let triples = |values: &[f32]| -> Vec<[f32; 3]> {
        values
            .chunks_exact(3)
            .map(|p| mesh_frame([p[0], p[1], p[2]]))
            .collect()
    };
    let positions = triples(&mesh.positions);
    let normals = triples(&mesh.normals);
    let vertices = positions.len();

    let Primitive {
        mut bin,
        mut views,
        mut accessors,
        mut attributes,
    } = Primitive::with_positions_and_normals(&positions, &normals);
    if mesh.texture.is_some() {
        let bytes = mesh.uvs.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = push_view(&mut bin, &mut views, bytes, ARRAY_BUFFER);
        attributes.insert("TEXCOORD_0".into(), json!(accessors.len()));
        accessors.push(json!({
            "bufferView": view, "componentType": FLOAT, "count": vertices, "type": "VEC2",
        }));
    } else if !mesh.colors.is_empty() {
        let linear: Vec<[f32; 3]> = mesh
            .colors
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]].map(|x| srgb_to_linear(x.clamp(0.0, 1.0))))
            .collect();
        let view = push_view(&mut bin, &mut views, vec3_bytes(&linear), ARRAY_BUFFER);
        attributes.insert("COLOR_0".into(), json!(accessors.len()));
        accessors.push(json!({
            "bufferView": view, "componentType": FLOAT, "count": vertices, "type": "VEC3",
        }));
    }
    let index_bytes = mesh.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
    let view = push_view(&mut bin, &mut views, index_bytes, ELEMENT_ARRAY_BUFFER);
    let indices = accessors.len();
    accessors.push(json!({
        "bufferView": view, "componentType": UNSIGNED_INT, "count": mesh.indices.len(),
        "type": "SCALAR",
    }));

    let mut pbr = json!({
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
        "metallicFactor": 0.0,
        "roughnessFactor": 1.0,
    });
    let mut document = one_mesh_document(attributes, indices);
    if let Some(texture) = &mesh.texture {
        let encoded = encode_image(texture, image_format)?;
        pad_to_4(&mut bin, 0);
        views.push(json!({ "buffer": 0, "byteOffset": bin.len(), "byteLength": encoded.len() }));
        bin.extend_from_slice(&encoded);
        let image_view = views.len() - 1;
        pbr["baseColorTexture"] = json!({ "index": 0, "texCoord": 0 });
        let texture_json = if image_format == ImageFormat::WebP {
            document["extensionsUsed"] = json!([EXT_WEBP]);
            document["extensionsRequired"] = json!([EXT_WEBP]);
            json!({ "sampler": 0, "extensions": { EXT_WEBP: { "source": 0 } } })
        } else {
            json!({ "sampler": 0, "source": 0 })
        };
        document["images"] =
            json!([{ "bufferView": image_view, "mimeType": image_format.mime_type() }]);
        document["samplers"] = json!([{
            "magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
            "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE,
        }]);
        document["textures"] = json!([texture_json]);
    }
    let name = if mesh.texture.is_some() {
        "baked texture"
    } else {
        "vertex colours"
    };
    document["materials"] = json!([{ "name": name, "pbrMetallicRoughness": pbr }]);
    document["accessors"] = Value::Array(accessors);
    document["bufferViews"] = Value::Array(views);
    document["buffers"] = json!([{ "byteLength": bin.len() }]);
    add_cameras(&mut document, &cameras)?;
    let json = serde_json::to_vec(&document)
        .map_err(|e| Error::internal(format!("serialising the glTF JSON failed: {e}")))?;
    assemble(json, bin)
}

/// The files of an OBJ export: `(file name, bytes)` for the OBJ, and with a texture the MTL
/// and the image, all to be placed in one directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjFiles {
    pub obj: (String, Vec<u8>),
    pub mtl: Option<(String, Vec<u8>)>,
    pub image: Option<(String, Vec<u8>)>,
}

/// Encodes a textured mesh as OBJ (+ MTL + image when it has a texture), the companion files
/// named `stem.mtl` and `stem.<ext>` (see the module documentation).
pub fn textured_mesh_to_obj(
    mesh: &TexturedMesh,
    stem: &str,
    image_format: ImageFormat,
) -> Result<ObjFiles> {
    check_textured_mesh(mesh)?;
    if stem.is_empty() || stem.contains(['/', '\\', '\n', '\r']) {
        return Err(Error::invalid_argument(format!(
            "OBJ file stem {stem:?} must be a plain, non-empty file name"
        )));
    }
    let v = mesh.vertex_count();
    let textured = mesh.texture.is_some();
    let mut text = String::with_capacity(64 + v * 100 + mesh.indices.len() * 12);
    let mtl_name = format!("{stem}.mtl");
    let image_name = format!("{stem}.{}", image_format.extension());
    let written = (|| -> std::fmt::Result {
        writeln!(
            text,
            "# recon: {v} vertices, {} triangles, Y up, metres",
            mesh.face_count()
        )?;
        if textured {
            writeln!(text, "mtllib {mtl_name}")?;
        }
        writeln!(text, "o recon")?;
        for i in 0..v {
            let p = &mesh.positions[3 * i..3 * i + 3];
            let [x, y, z] = mesh_frame([p[0], p[1], p[2]]);
            if !textured && !mesh.colors.is_empty() {
                let c = &mesh.colors[3 * i..3 * i + 3];
                let [r, g, b] = [c[0], c[1], c[2]].map(|x| x.clamp(0.0, 1.0));
                writeln!(text, "v {x} {y} {z} {r} {g} {b}")?;
            } else {
                writeln!(text, "v {x} {y} {z}")?;
            }
        }
        if textured {
            for uv in mesh.uvs.chunks_exact(2) {
                writeln!(text, "vt {} {}", uv[0], 1.0 - uv[1])?;
            }
        }
        for n in mesh.normals.chunks_exact(3) {
            let [x, y, z] = mesh_frame([n[0], n[1], n[2]]);
            writeln!(text, "vn {x} {y} {z}")?;
        }
        if textured {
            writeln!(text, "usemtl baked")?;
        }
        for t in mesh.indices.chunks_exact(3) {
            let [a, b, c] = [t[0], t[1], t[2]].map(|i| u64::from(i) + 1);
            if textured {
                writeln!(text, "f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}")?;
            } else {
                writeln!(text, "f {a}//{a} {b}//{b} {c}//{c}")?;
            }
        }
        Ok(())
    })();
    written.map_err(|_| Error::internal("formatting OBJ text failed"))?;
    let obj = (format!("{stem}.obj"), text.into_bytes());
    let Some(texture) = &mesh.texture else {
        return Ok(ObjFiles {
            obj,
            mtl: None,
            image: None,
        });
    };
    let mtl = format!(
        "# recon: baked base colour\nnewmtl baked\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 0\nd 1\n\
         illum 1\nPr 1\nPm 0\nmap_Kd {image_name}\n"
    );
    Ok(ObjFiles {
        obj,
        mtl: Some((mtl_name, mtl.into_bytes())),
        image: Some((image_name, encode_image(texture, image_format)?)),
    })
}

/// Writes [`textured_mesh_to_obj`]'s files as a set: `path` is the OBJ, its MTL and image go
/// beside it, named after its stem. Returns the paths written, the OBJ last.
pub fn write_textured_obj(
    mesh: &TexturedMesh,
    path: &Path,
    image_format: ImageFormat,
) -> Result<Vec<PathBuf>> {
    let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
        Error::invalid_argument(format!(
            "{}: the OBJ path needs a UTF-8 file name",
            path.display()
        ))
    })?;
    let files = textured_mesh_to_obj(mesh, stem, image_format)?;
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let mut order: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (name, bytes) in files.image.into_iter().chain(files.mtl) {
        order.push((dir.join(name), bytes));
    }
    order.push((path.to_path_buf(), files.obj.1));
    let borrowed: Vec<(&Path, &[u8])> = order
        .iter()
        .map(|(p, b)| (p.as_path(), b.as_slice()))
        .collect();
    super::atomic::write_set_atomically(&borrowed)?;
    Ok(order.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad(textured: bool) -> TexturedMesh {
        TexturedMesh {
            positions: vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
            normals: [0.0, 0.0, 1.0].repeat(4),
            uvs: if textured {
                vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
            } else {
                vec![]
            },
            indices: vec![0, 1, 2, 0, 2, 3],
            texture: textured
                .then(|| image::RgbImage::from_pixel(4, 4, image::Rgb([200, 100, 50]))),
            colors: vec![],
        }
    }

    #[test]
    fn obj_flips_v_and_names_its_companions() {
        let files = textured_mesh_to_obj(&quad(true), "asset", ImageFormat::Png).unwrap();
        let text = String::from_utf8(files.obj.1).unwrap();
        assert!(text.contains("mtllib asset.mtl"));
        assert!(text.contains("vt 0 0\n"), "{text}");
        assert!(text.contains("f 1/1/1 2/2/2 3/3/3"));
        let mtl = String::from_utf8(files.mtl.unwrap().1).unwrap();
        assert!(mtl.contains("map_Kd asset.png"));
        assert_eq!(files.image.unwrap().0, "asset.png");
        assert!(textured_mesh_to_obj(&quad(true), "a/b", ImageFormat::Png).is_err());
    }

    #[test]
    fn inconsistent_meshes_are_refused() {
        let mut mesh = quad(true);
        mesh.uvs[3] = 1.5;
        assert!(textured_mesh_to_glb(&mesh, ImageFormat::Png, &[]).is_err());
        let mut mesh = quad(false);
        mesh.uvs = vec![0.0; 8];
        assert!(check_textured_mesh(&mesh).is_err());
        let mut mesh = quad(true);
        mesh.normals.pop();
        assert!(check_textured_mesh(&mesh).is_err());
        assert!(encode_image(
            &image::RgbImage::new(2, 2),
            ImageFormat::Jpeg { quality: 0 }
        )
        .is_err());
    }
}
