"""sact_tf: Spatially Adaptive Computation Time for ResNets in TF2 / Keras 3."""

import setuptools

setuptools.setup(
    name='sact_tf',
    version='0.1.0',
    description=('Spatially Adaptive Computation Time (Figurnov et al., CVPR '
                 '2017) for residual networks in TensorFlow 2 / Keras 3.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['sact_tf', 'sact_tf.*',
                                               'experiments', 'experiments.*']),
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.16',
        'tensorflow-datasets>=4.9',
        'numpy',
        'absl-py',
        'pycocotools',
        # tf.summary needs it; TensorFlow 2.21 no longer installs it.
        'tensorboard',
        # TFDS 4.9.10 imports it when preparing any dataset.
        'importlib_resources',
        # Ships the offline demo data: handwritten digits and sample photos.
        'scikit-learn',
        # Gaussian filters for saliency maps and MATLAB .mat fixation files.
        'scipy',
        # Colour maps, colour bars and plots of ponder maps.
        'matplotlib',
        # Progress bars on a terminal (sact_tf.progress).
        'tqdm',
    ],
    extras_require={
        # pytest-xdist runs the suite's modules on two processes (a module's
        # tests stay together and share its fixtures): about 1.8x faster on
        # a 2-core machine than one process.
        'test': ['pytest', 'pytest-xdist'],
    },
    license='Apache-2.0',
)
