// What both player pages share: reading the URL, reporting failure, and the camera conventions.
//
// URL parameters (README.md has the full description):
//   file=model.compressed.ply   splat file, relative to the page
//   pos=x,y,z                   camera centre in the model file's frame
//   quat=x,y,z,w                camera-to-world rotation, OpenCV axes (x right, y down, z forward)
//   fov=deg                     vertical field of view in degrees (default 60)
//   k=fx,fy,cx,cy               full pinhole intrinsics in pixels (overrides fov; off-centre principal points)
//   w=px&h=px                   fixed canvas size (default: fill the window)
//   fit=1                       fill the window anyway: w, h are then the camera's image size, kept in the
//                               vertical field of view (k= scales with the window's height)
//   bg=r,g,b                    background colour, 0..1 (default 0,0,0)
//   up=x,y,z                    the scene's up direction in the file's frame, the axis dragging orbits about
//                               (default 0,-1,0: COLMAP's usual -y)
//   near=, far=                 clip distances (default 0.01, 1000)
// When the splats are drawn, sorted, with the requested camera, document.title becomes "ready" and
// window.playerReady is true; a failure shows its text on the page, sets window.playerError (a string)
// and the title "error".

window.playerReady = false;
window.playerError = null;

export function fail(message) {
    const status = document.getElementById('status');
    window.playerError = String(message);
    status.textContent = `cannot show the model: ${message}`;
    status.className = 'error';
    document.title = 'error';
}

export function setReady() {
    document.getElementById('status').textContent = '';
    window.playerReady = true;
    document.title = 'ready';
}

// Comma-separated finite numbers of an exact count, or `fallback` when the parameter is absent.
function numbers(params, name, count, fallback = null) {
    const text = params.get(name);
    if (text === null || text === '') {
        return fallback;
    }
    const values = text.split(',').map(Number);
    if (values.length !== count || !values.every(Number.isFinite)) {
        throw new Error(`URL parameter ${name}=${text}: expected ${count} comma-separated numbers`);
    }
    return values;
}

export function readOptions(search = window.location.search) {
    const params = new URLSearchParams(search);
    const file = params.get('file');
    if (!file) {
        throw new Error('no model given: add ?file=<splat file> to the URL');
    }
    if (/^[a-z][a-z0-9+.-]*:/i.test(file) || file.startsWith('/')) {
        throw new Error(`file=${file}: give a path relative to this page`);
    }
    const width = numbers(params, 'w', 1);
    const height = numbers(params, 'h', 1);
    if ((width === null) !== (height === null)) {
        throw new Error('give both w= and h=, or neither');
    }
    const options = {
        file,
        url: new URL(file, window.location.href).href,
        pos: numbers(params, 'pos', 3),
        quat: numbers(params, 'quat', 4),
        fov: numbers(params, 'fov', 1, [60])[0],
        k: numbers(params, 'k', 4),
        size: width === null ? null : [Math.round(width[0]), Math.round(height[0])],
        fit: params.get('fit') === '1',
        bg: numbers(params, 'bg', 3, [0, 0, 0]),
        up: numbers(params, 'up', 3, [0, -1, 0]),
        near: numbers(params, 'near', 1, [0.01])[0],
        far: numbers(params, 'far', 1, [1000])[0],
    };
    if (Math.hypot(...options.up) < 1e-9) {
        throw new Error('up= must not be the zero vector');
    }
    if ((options.pos === null) !== (options.quat === null)) {
        throw new Error('give both pos= and quat=, or neither');
    }
    if (options.size && !options.size.every((v) => v >= 1 && v <= 8192)) {
        throw new Error(`canvas size ${options.size.join('x')} is out of range`);
    }
    if ((options.k || options.fit) && !options.size) {
        throw new Error('k= and fit=1 need w= and h=, the image size the camera is given for');
    }
    options.cameraSize = options.size;
    if (options.fit) {
        options.size = null; // the canvas fills the window
    }
    if (!(options.fov > 0 && options.fov < 180) || !(options.near > 0 && options.far > options.near)) {
        throw new Error('fov must be in (0, 180) degrees and 0 < near < far');
    }
    return options;
}

// A fixed-size canvas (w=, h=) is sized here, in device pixels and CSS pixels alike.
export function sizeCanvas(canvas, options) {
    if (options.size) {
        canvas.width = options.size[0];
        canvas.height = options.size[1];
        canvas.style.width = `${options.size[0]}px`;
        canvas.style.height = `${options.size[1]}px`;
    }
}

// OpenCV camera-to-world rotation (x, y, z, w) -> the rotation of an OpenGL-style camera (looking down -Z,
// +Y up): R_gl = R_cv * diag(1, -1, -1), a half turn about the camera's own x axis, i.e. q_cv * (1, 0, 0, 0).
export function glCameraQuat([x, y, z, w]) {
    const n = Math.hypot(x, y, z, w);
    [x, y, z, w] = [x / n, y / n, z / n, w / n];
    return [w, z, -y, -x]; // (x, y, z, w) of q_cv * (1, 0, 0, 0)
}

// The URL's intrinsics for a canvas of width x height (null without k=): as given on a fixed canvas; with
// fit=1 scaled by the canvas height over the camera's, the principal point keeping its offset from the
// centre in proportion.
export function intrinsics(options, width, height) {
    if (!options.k) {
        return null;
    }
    const [fx, fy, cx, cy] = options.k;
    const [w0, h0] = options.cameraSize;
    const s = height / h0;
    return [fx * s, fy * s, 0.5 * width + (cx - 0.5 * w0) * s, 0.5 * height + (cy - 0.5 * h0) * s];
}

// OpenGL projection (column-major 16 numbers) from pinhole intrinsics (pixel centres at +0.5, as
// splatkit's Camera.K), for a width x height canvas: u = fx * X / Z + cx in OpenCV camera axes.
export function pinholeProjection(out, [fx, fy, cx, cy], width, height, near, far) {
    out.fill(0);
    out[0] = 2 * fx / width;
    out[5] = 2 * fy / height;
    out[8] = 1 - 2 * cx / width;
    out[9] = 2 * cy / height - 1;
    out[10] = -(far + near) / (far - near);
    out[11] = -1;
    out[14] = -2 * far * near / (far - near);
    return out;
}
