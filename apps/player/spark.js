// splatkit player, Spark (three.js) engine: shows one .spz or .splat from the camera in the URL.
// params.js describes the URL parameters and the "ready" / error signals the tests wait for.

import * as THREE from 'three';
import { SparkControls, SparkRenderer, SplatMesh } from './spark.module.js';
import { fail, glCameraQuat, intrinsics, pinholeProjection, readOptions, setReady, sizeCanvas } from './params.js';

const canvas = document.getElementById('player');

async function diagnose(options, err) {
    let reason = err?.message ?? String(err);
    try { // say what the server said rather than how the parser tripped over an error page
        const response = await fetch(options.url, { method: 'HEAD' });
        if (!response.ok) {
            reason = `HTTP ${response.status} ${response.statusText}`.trim();
        }
    } catch (e) {
        reason = `${reason} (${e.message})`;
    }
    return `${options.file}: ${reason}`;
}

async function start() {
    const options = readOptions();
    sizeCanvas(canvas, options);
    const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, alpha: false });
    const camera = new THREE.PerspectiveCamera(options.fov, 1, options.near, options.far);
    const resize = () => {
        const [w, h] = options.size ?? [window.innerWidth, window.innerHeight];
        renderer.setPixelRatio(options.size ? 1 : Math.min(window.devicePixelRatio, 2));
        renderer.setSize(w, h, !options.size);
        camera.aspect = w / h;
        camera.updateProjectionMatrix();
        if (options.k) {
            pinholeProjection(camera.projectionMatrix.elements, intrinsics(options, w, h), w, h, options.near,
                options.far);
            camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
        }
    };
    resize();
    let dirty = true;
    if (!options.size) {
        window.addEventListener('resize', () => {
            resize();
            dirty = true;
        });
    }
    // Colours as stored (sRGB display values), sorted by view depth as splatkit's rasterizer sorts, and
    // the 0.3 px^2 screen-space blur every 3DGS renderer adds (Spark's default is 0).
    renderer.setClearColor(new THREE.Color().setRGB(...options.bg, THREE.SRGBColorSpace), 1);
    const spark = new SparkRenderer({ renderer, preBlurAmount: 0.3, sortRadial: false,
        onDirty: () => { dirty = true; } });
    const scene = new THREE.Scene();
    scene.add(spark);

    const mesh = new SplatMesh({ url: options.url });
    if (/\.spz$/i.test(options.file)) {
        mesh.quaternion.set(1, 0, 0, 0); // SPZ stores RUB axes; the camera is in splatkit's RDF frame
    }
    scene.add(mesh);
    try {
        await mesh.initialized;
    } catch (err) {
        fail(await diagnose(options, err));
        return;
    }
    if (options.pos) {
        camera.position.set(...options.pos);
        camera.quaternion.set(...glCameraQuat(options.quat));
    } else { // look along the file frame's +z (OpenCV forward, y down) at the bounds
        mesh.updateMatrixWorld();
        const box = mesh.getBoundingBox().applyMatrix4(mesh.matrixWorld);
        const sphere = box.getBoundingSphere(new THREE.Sphere());
        const distance = 1.1 * Math.max(sphere.radius, 1e-6) / Math.sin(0.5 * options.fov * Math.PI / 180);
        camera.position.copy(sphere.center).add(new THREE.Vector3(0, 0, -distance));
        camera.quaternion.set(...glCameraQuat([0, 0, 0, 1]));
    }
    const controls = new SparkControls({ canvas });
    const lastPose = new THREE.Matrix4();
    let settled = 0;
    renderer.setAnimationLoop(() => {
        controls.update(camera);
        camera.updateMatrixWorld();
        const moved = !lastPose.equals(camera.matrixWorld);
        if (!moved && !dirty && window.playerReady) {
            return; // nothing changed: leave the last frame up
        }
        lastPose.copy(camera.matrixWorld);
        dirty = false;
        renderer.render(scene, camera);
        // "ready" once a few frames in a row were drawn with a finished sort for this camera.
        const sorted = spark.orderingTexture !== null && !spark.sorting && !spark.sortDirty;
        settled = sorted && !moved ? settled + 1 : 0;
        if (settled >= 3 && !window.playerReady) {
            setReady();
        }
    });
}

start().catch((err) => fail(err?.message ?? err));
