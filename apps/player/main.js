// splatkit player, PlayCanvas engine: shows one .ply (INRIA or PlayCanvas compressed) or SOG (a .sog bundle, a
// meta.json with its .webp images beside it, or a streamed SOG's lod-meta.json with its chunk folders, streamed
// by level of detail; the engine picks its parser by file name) from the camera in
// the URL. params.js describes the URL parameters and the "ready" / error signals the tests wait for.

import * as pc from './playcanvas.mjs';
import { fail, glCameraQuat, intrinsics, pinholeProjection, readOptions, setReady, sizeCanvas } from './params.js';

const canvas = document.getElementById('player');

function setPose(entity, pos, quat) {
    const [x, y, z, w] = glCameraQuat(quat);
    entity.setPosition(pos[0], pos[1], pos[2]);
    entity.setRotation(new pc.Quat(x, y, z, w));
}

// Without a camera in the URL: look along the model frame's +z (OpenCV forward, y down) at its bounds.
function frameBounds(entity, aabb, fovDeg) {
    const radius = Math.max(aabb.halfExtents.length(), 1e-6);
    const distance = 1.1 * radius / Math.sin(0.5 * fovDeg * Math.PI / 180);
    const c = aabb.center;
    setPose(entity, [c.x, c.y, c.z - distance], [0, 0, 0, 1]);
    return c.clone();
}

// Drag to orbit around `target` (turning about the scene's `up`), wheel or pinch to move closer; only after
// the user touches the page.
function addOrbitControls(app, camera, target, up) {
    const upAxis = new pc.Vec3(up[0], up[1], up[2]).normalize();
    const pointers = new Map();
    let pinch = null;
    const orbit = (dx, dy) => {
        const offset = camera.getPosition().clone().sub(target);
        const yaw = new pc.Quat().setFromAxisAngle(upAxis, -dx * 0.3);
        const pitch = new pc.Quat().setFromAxisAngle(camera.right, -dy * 0.3);
        const turn = new pc.Quat().mul2(yaw, pitch);
        camera.setPosition(turn.transformVector(offset).add(target));
        camera.setRotation(new pc.Quat().mul2(turn, camera.getRotation()));
        app.renderNextFrame = true;
    };
    const zoom = (factor) => {
        const offset = camera.getPosition().clone().sub(target).mulScalar(factor);
        camera.setPosition(offset.add(target));
        app.renderNextFrame = true;
    };
    canvas.addEventListener('pointerdown', (e) => {
        canvas.setPointerCapture(e.pointerId);
        pointers.set(e.pointerId, [e.clientX, e.clientY]);
    });
    canvas.addEventListener('pointermove', (e) => {
        const last = pointers.get(e.pointerId);
        if (!last) {
            return;
        }
        pointers.set(e.pointerId, [e.clientX, e.clientY]);
        if (pointers.size === 1) {
            orbit(e.clientX - last[0], e.clientY - last[1]);
        } else if (pointers.size === 2) {
            const [a, b] = [...pointers.values()];
            const span = Math.hypot(a[0] - b[0], a[1] - b[1]);
            if (pinch) {
                zoom(pinch / Math.max(span, 1));
            }
            pinch = span;
        }
    });
    const release = (e) => {
        pointers.delete(e.pointerId);
        pinch = null;
    };
    canvas.addEventListener('pointerup', release);
    canvas.addEventListener('pointercancel', release);
    canvas.addEventListener('wheel', (e) => {
        e.preventDefault();
        zoom(Math.exp(e.deltaY * 0.001));
    }, { passive: false });
    canvas.style.touchAction = 'none';
}

function start() {
    const options = readOptions();
    sizeCanvas(canvas, options);
    const app = new pc.Application(canvas, {
        graphicsDeviceOptions: { antialias: false, alpha: false, preserveDrawingBuffer: false }
    });
    app.graphicsDevice.maxPixelRatio = options.size ? 1 : Math.min(window.devicePixelRatio, 2);
    if (options.size) {
        app.setCanvasFillMode(pc.FILLMODE_NONE, options.size[0], options.size[1]);
        app.setCanvasResolution(pc.RESOLUTION_FIXED, options.size[0], options.size[1]);
    } else {
        app.setCanvasFillMode(pc.FILLMODE_FILL_WINDOW);
        app.setCanvasResolution(pc.RESOLUTION_AUTO);
        window.addEventListener('resize', () => {
            app.resizeCanvas();
            app.renderNextFrame = true;
        });
    }
    // Splat colours are display (sRGB) values: with sRGB output and no tone mapping the engine passes them
    // through unchanged, as splatkit's rasterizer does. Mip-splatting's opacity compensation stays off.
    app.scene.gsplat.antiAlias = false;

    const camera = new pc.Entity('camera');
    camera.addComponent('camera', {
        clearColor: new pc.Color(options.bg[0], options.bg[1], options.bg[2], 1),
        fov: options.fov,
        nearClip: options.near,
        farClip: options.far,
        gammaCorrection: pc.GAMMA_SRGB,
        toneMapping: pc.TONEMAP_NONE,
    });
    if (options.k) {
        camera.camera.calculateProjection = (mat) => {
            const { width, height } = app.graphicsDevice;
            pinholeProjection(mat.data, intrinsics(options, width, height), width, height, options.near,
                options.far);
        };
    }
    app.root.addChild(camera);

    const asset = new pc.Asset('model', 'gsplat', { url: options.url });
    let loaded = false;
    let readyFrames = 0;
    asset.once('error', async (err) => {
        app.autoRender = false;
        let reason = err?.message ?? err;
        try { // a missing file reads as a broken header; say what the server said instead
            const response = await fetch(options.url, { method: 'HEAD' });
            if (!response.ok) {
                reason = `HTTP ${response.status} ${response.statusText}`.trim();
            }
        } catch (e) {
            reason = `${reason} (${e.message})`;
        }
        fail(`${options.file}: ${reason}`);
    });
    asset.once('load', () => {
        const model = new pc.Entity('model');
        model.addComponent('gsplat', { asset });
        app.root.addChild(model);
        let target;
        if (options.pos) {
            setPose(camera, options.pos, options.quat);
            // Orbit about the point straight ahead at the depth of the model's centre (as the viewer frames a
            // training camera), not a fixed distance that can lie far behind or before the scene.
            const { center, halfExtents } = asset.resource.aabb;
            const position = camera.getPosition().clone();
            const ahead = new pc.Vec3().sub2(center, position).dot(camera.forward);
            const depth = ahead > 1e-6 ? ahead : Math.max(halfExtents.length(), 1e-3);
            target = position.add(camera.forward.clone().mulScalar(depth));
        } else {
            target = frameBounds(camera, asset.resource.aabb, options.fov);
        }
        addOrbitControls(app, camera, target, options.up);
        loaded = true;
    });
    // "ready" once a few consecutive frames are up to date (sorted for this camera, nothing loading).
    app.systems.gsplat.on('frame:ready', (cam, layer, ready, loadingCount) => {
        if (!loaded || window.playerReady) {
            return;
        }
        readyFrames = ready && !loadingCount ? readyFrames + 1 : 0;
        if (readyFrames >= 3) {
            setReady();
            app.autoRender = false; // from now on draw only when something changes
        }
    });
    app.systems.gsplat.on('frame:request', () => {
        app.renderNextFrame = true;
    });
    app.start();
    app.assets.add(asset);
    app.assets.load(asset);
}

try {
    start();
} catch (err) {
    fail(err?.message ?? err);
}
